//! The whole (state x event) table of [`transition`], as one reviewed snapshot, plus focused tests
//! of the policies it applies (backoff, retry-after, error and history bounds, enqueue validation).
//!
//! The snapshot is the spec: a semantic change to the core shows up as a diff here. Regenerate with
//! `UPDATE_EXPECT=1 cargo test -p dray-core --test transitions` and read the diff against the
//! delivery contract in PRODUCT.md before accepting it.

use std::fmt::Write as _;

use dray_core::job::validate_traceparent;
use dray_core::{
    Backoff, Effect, Event, FencingToken, HistoryKind, Job, JobId, JobState, LeaseId, Limits, NewJob, Payload,
    QueueName, Rejection, RetryPolicy, Timestamp, Transition, WorkerId, transition,
};
use expect_test::{Expect, expect};

/// The instant every event in the table is applied at. Far from zero so deltas read clearly.
const NOW: Timestamp = Timestamp(1_000_000_000);
/// Half of `u64::MAX`: full jitter then picks the middle of the window, so a delay of exactly
/// half the window shows the jitter was applied and the window is the one expected.
const RANDOM: u64 = u64::MAX / 2;
const LEASE_MS: u64 = 30_000;
const ATTEMPTS_MAX: u32 = 3;
const BACKOFF: Backoff = Backoff { base_ms: 1_000, factor: 2.0, cap_ms: 60_000 };

/// The lease every prepared job was (last) leased under.
const LEASE_HELD: LeaseId = LeaseId(0x1111);
/// A lease the job never had.
const LEASE_WRONG: LeaseId = LeaseId(0xdead);
/// The lease the table's `lease` event grants.
const LEASE_NEW: LeaseId = LeaseId(0x2222);

fn worker() -> WorkerId {
    WorkerId::new("worker-1").unwrap()
}

fn queue() -> QueueName {
    QueueName::new("emails").unwrap()
}

fn new_job() -> NewJob {
    let mut new = NewJob::new(queue(), Payload::new(&b"{}"[..]));
    new.attempts_max = Some(ATTEMPTS_MAX);
    new.backoff = Some(BACKOFF);
    new
}

fn policy() -> RetryPolicy {
    RetryPolicy::default()
}

/// `now` relative to [`NOW`], as the table prints it.
fn t(at: Timestamp) -> String {
    let d = at.as_millis() - NOW.as_millis();
    match d {
        0 => "now".to_string(),
        d if d > 0 => format!("now+{d}"),
        d => format!("now{d}"),
    }
}

/// Applies `event` at `at`, which must be accepted: used to prepare jobs, never to test.
#[track_caller]
fn step(job: &mut Job, event: Event<'_>, at: Timestamp) {
    let t = transition(job, event, at, RANDOM).expect("preparing a job: event must be accepted");
    job.apply(t);
}

fn ago(ms: u64) -> Timestamp {
    Timestamp(NOW.as_millis() - ms as i64)
}

fn lease_event(worker: &WorkerId, id: LeaseId, token: u64) -> Event<'_> {
    Event::Lease { id, token: FencingToken(token), worker, lease_ms: None }
}

fn step_event<'a>(lease: LeaseId, name: &'a str, result: &str) -> Event<'a> {
    Event::Step { lease, name, result: Payload::new(result.as_bytes().to_vec()) }
}

fn fail_event(lease: LeaseId) -> Event<'static> {
    Event::Fail { lease, error: "boom", retryable: true, retry_after_ms: None, rate_limited: false }
}

/// One representative job per state (and the interesting variants of `running`, `scheduled` and
/// `retrying`), each reached from an enqueue through accepted transitions, so none is a state the
/// core could not produce.
fn cases() -> Vec<(&'static str, Job)> {
    let w = worker();
    let enqueue = |new: NewJob, at: Timestamp| new.into_job(JobId(1), at, policy(), LEASE_MS);
    let available = || enqueue(new_job(), ago(60_000));
    // Leased `ms` before NOW with the job's 30 s lease: deadline is NOW + 30_000 - ms.
    let running_since = |ms: u64| {
        let mut job = available();
        step(&mut job, lease_event(&w, LEASE_HELD, 7), ago(ms));
        job
    };
    // Failed at attempt 1, `ms` before NOW, asking for a retry 5 s after the failure.
    let retrying_since = |ms: u64| {
        let mut job = running_since(ms + 1_000);
        let fail = Event::Fail {
            lease: LEASE_HELD,
            error: "boom",
            retryable: true,
            retry_after_ms: Some(5_000),
            rate_limited: false,
        };
        step(&mut job, fail, ago(ms));
        job
    };
    // Two attempts failed and retried, the third (last) leased `ms` before NOW.
    let last_attempt = |ms: u64| {
        let mut job = available();
        let mut at = ago(55_000);
        for token in 5..7 {
            step(&mut job, lease_event(&w, LeaseId(token), token), at);
            step(&mut job, fail_event(LeaseId(token)), at.add_ms(1_000));
            at = at.add_ms(10_000);
            step(&mut job, Event::Promote, at);
        }
        step(&mut job, lease_event(&w, LEASE_HELD, 7), ago(ms));
        job
    };

    let mut scheduled_early = new_job();
    scheduled_early.run_at = Some(NOW.add_ms(5_000));
    let mut scheduled_due = new_job();
    scheduled_due.run_at = Some(NOW);

    let mut cancel_requested = running_since(10_000);
    step(&mut cancel_requested, Event::Cancel, ago(5_000));
    let mut cancel_requested_passed = running_since(LEASE_MS + 1);
    step(&mut cancel_requested_passed, Event::Cancel, ago(5_000));

    let mut completed = running_since(10_000);
    step(&mut completed, Event::Complete { lease: LEASE_HELD, result: None }, ago(1_000));

    let mut dead = last_attempt(10_000);
    step(&mut dead, fail_event(LEASE_HELD), ago(1_000));

    let mut cancelled = available();
    step(&mut cancelled, Event::Cancel, ago(1_000));

    let blocked = |new: NewJob| enqueue(new, ago(10_000)).with_dependencies(Box::new([JobId(9)]), true);
    let mut blocked_run_at_ahead = new_job();
    blocked_run_at_ahead.run_at = Some(NOW.add_ms(5_000));
    // Recorded step `s1` (the name the table's `step.recorded_name` event sends again), then the
    // attempt failed: a retrying job keeps its steps.
    let mut with_step = running_since(10_000);
    step(&mut with_step, step_event(LEASE_HELD, "s1", "\"first\""), ago(5_000));
    let mut retrying_with_step = with_step.clone();
    step(&mut retrying_with_step, fail_event(LEASE_HELD), ago(4_000));

    vec![
        ("scheduled.early", enqueue(scheduled_early, ago(10_000))),
        ("scheduled.due_now", enqueue(scheduled_due, ago(10_000))),
        ("available", available()),
        ("running", running_since(10_000)),
        ("running.cancel_requested", cancel_requested),
        ("running.cancel_requested.deadline_passed", cancel_requested_passed),
        ("running.last_attempt", last_attempt(10_000)),
        ("running.last_attempt.deadline_passed", last_attempt(LEASE_MS + 1)),
        ("running.deadline_now", running_since(LEASE_MS)),
        ("running.deadline_passed", running_since(LEASE_MS + 1)),
        ("running.step_recorded", with_step),
        ("retrying.early", retrying_since(1_000)),
        ("retrying.due", retrying_since(10_000)),
        ("retrying.step_recorded", retrying_with_step),
        ("completed", completed),
        ("dead", dead),
        ("cancelled", cancelled),
        ("blocked", blocked(new_job())),
        ("blocked.run_at_ahead", blocked(blocked_run_at_ahead)),
    ]
}

fn events(w: &WorkerId) -> Vec<(&'static str, Event<'_>)> {
    let heartbeat = |lease| Event::Heartbeat {
        lease,
        extend_ms: None,
        progress: Some(Payload::new(&b"50%"[..])),
        checkpoint: Some(Payload::new(&b"c1"[..])),
    };
    let fail = |retryable, retry_after_ms| Event::Fail {
        lease: LEASE_HELD,
        error: "boom",
        retryable,
        retry_after_ms,
        rate_limited: false,
    };
    let rate_limited = |retry_after_ms| Event::Fail {
        lease: LEASE_HELD,
        error: "429",
        retryable: true,
        retry_after_ms,
        rate_limited: true,
    };
    vec![
        ("promote", Event::Promote),
        ("lease", lease_event(w, LEASE_NEW, 8)),
        ("heartbeat", heartbeat(LEASE_HELD)),
        ("heartbeat.wrong_lease", heartbeat(LEASE_WRONG)),
        ("complete", Event::Complete { lease: LEASE_HELD, result: Some(Payload::new(&b"1"[..])) }),
        ("complete.wrong_lease", Event::Complete { lease: LEASE_WRONG, result: None }),
        ("fail", fail(true, None)),
        ("fail.non_retryable", fail(false, None)),
        ("fail.retry_after_2s", fail(true, Some(2_000))),
        ("fail.rate_limited", rate_limited(None)),
        ("fail.rate_limited_after_2s", rate_limited(Some(2_000))),
        ("expire", Event::Expire),
        ("cancel", Event::Cancel),
        ("redrive", Event::Redrive),
        ("reject", Event::Reject { error: "payload at /n: not an integer" }),
        ("release", Event::Release),
        ("dependency_failed", Event::DependencyFailed { dependency: JobId(9), state: Some(JobState::Dead) }),
        ("step", step_event(LEASE_HELD, "s2", "2")),
        ("step.wrong_lease", step_event(LEASE_WRONG, "s2", "2")),
        ("step.recorded_name", step_event(LEASE_HELD, "s1", "\"second\"")),
    ]
}

/// One line: what the event did, as the fields a reviewer checks against the contract.
fn render(before: &Job, outcome: Result<Transition, Rejection>) -> String {
    let tr = match outcome {
        Err(rejection) => return format!("rejected {}", render_rejection(&rejection)),
        Ok(tr) => tr,
    };
    let s = &tr.status;
    let mut out = format!("{} attempt={}", s.state, s.attempt);
    if s.run_at != before.status.run_at {
        write!(out, " run_at={}", t(s.run_at)).unwrap();
    }
    if let Some(lease) = &s.lease {
        write!(out, " lease={:x}/token={}/deadline={}", lease.id.0, lease.token, t(lease.deadline)).unwrap();
    }
    if s.cancel_requested {
        out.push_str(" cancel_requested");
    }
    if let Some(reason) = s.dead_reason {
        write!(out, " dead_reason={}", reason.as_str()).unwrap();
    }
    if s.finished_at != before.status.finished_at {
        match s.finished_at {
            Some(at) => write!(out, " finished_at={}", t(at)).unwrap(),
            None => out.push_str(" finished_at=-"),
        }
    }
    if s.last_error != before.status.last_error {
        write!(out, " last_error={:?}", s.last_error.as_deref().unwrap_or("-")).unwrap();
    }
    if s.result != before.status.result {
        write!(out, " result={:?}", s.result).unwrap();
    }
    if s.progress != before.status.progress {
        write!(out, " progress={:?}", s.progress).unwrap();
    }
    if s.checkpoint != before.status.checkpoint {
        write!(out, " checkpoint={:?}", s.checkpoint).unwrap();
    }
    match &tr.history {
        Some(h) => {
            write!(out, " | history={}", h.kind.as_str()).unwrap();
            if let Some(token) = h.token {
                write!(out, "/token={token}").unwrap();
            }
            if let Some(worker) = &h.worker {
                write!(out, "/worker={worker}").unwrap();
            }
            if let Some(at) = h.run_at {
                write!(out, "/run_at={}", t(at)).unwrap();
            }
            if h.kind == HistoryKind::StepRecorded {
                write!(out, "/step={}", h.error.as_deref().unwrap_or("-")).unwrap();
            }
        }
        None => out.push_str(" | history=-"),
    }
    let effects: Vec<String> = tr.effects.iter().map(render_effect).collect();
    write!(out, " | {}", effects.join(",")).unwrap();
    out
}

fn render_effect(e: &Effect) -> String {
    match e {
        Effect::Delivered => "delivered".to_string(),
        Effect::LeaseExtended { deadline, cancel_requested } => {
            format!("lease_extended(deadline={}, cancel_requested={cancel_requested})", t(*deadline))
        }
        Effect::RetryScheduled { at } => format!("retry_scheduled({})", t(*at)),
        Effect::QueueBackoff { until } => format!("queue_backoff({})", t(*until)),
        Effect::DeadLettered { reason } => format!("dead_lettered({})", reason.as_str()),
        Effect::Finished => "finished".to_string(),
        Effect::BecameAvailable => "became_available".to_string(),
        Effect::CancelRequested => "cancel_requested".to_string(),
        Effect::Unchanged => "unchanged".to_string(),
        Effect::StepRecorded(s) => {
            format!("step_recorded({}={:?}, attempt={}, at={})", s.name, s.result, s.attempt, t(s.at))
        }
        Effect::StepKnown(s) => format!("step_known({}={:?}, attempt={}, at={})", s.name, s.result, s.attempt, t(s.at)),
    }
}

fn render_rejection(r: &Rejection) -> String {
    match r {
        Rejection::StaleLease { state } => format!("StaleLease({state})"),
        Rejection::LeaseExpired { deadline } => format!("LeaseExpired(deadline={})", t(*deadline)),
        Rejection::LeaseLive { deadline } => format!("LeaseLive(deadline={})", t(*deadline)),
        Rejection::NotDue { run_at } => format!("NotDue(run_at={})", t(*run_at)),
        Rejection::AlreadyFinished { state } => format!("AlreadyFinished({state})"),
        Rejection::NotAllowed { state, event } => format!("NotAllowed({event} when {state})"),
        Rejection::Invalid(invalid) => format!("Invalid({})", invalid.field),
    }
}

fn describe(job: &Job) -> String {
    let s = &job.status;
    let mut out = format!("{} attempt={}/{} run_at={}", s.state, s.attempt, job.retry.attempts_max, t(s.run_at));
    if let Some(lease) = &s.lease {
        write!(out, " lease={:x}/token={}/deadline={}", lease.id.0, lease.token, t(lease.deadline)).unwrap();
    }
    if s.cancel_requested {
        out.push_str(" cancel_requested");
    }
    if let Some(reason) = s.dead_reason {
        write!(out, " dead_reason={}", reason.as_str()).unwrap();
    }
    for step in job.steps.iter() {
        write!(out, " step:{}={:?}", step.name, step.result).unwrap();
    }
    out
}

fn table() -> String {
    let w = worker();
    let mut out = String::new();
    for (name, job) in cases() {
        writeln!(out, "## {name}: {}", describe(&job)).unwrap();
        for (event_name, event) in events(&w) {
            let outcome = transition(&job, event, NOW, RANDOM);
            writeln!(out, "{event_name:<22} => {}", render(&job, outcome)).unwrap();
        }
        out.push('\n');
    }
    out
}

#[test]
fn transition_table() {
    // Every line is a clause of the contract at `now`; rejections are normal values. Times are
    // relative to `now`; the lease every job was last leased under is 1111 (token 7), the `lease`
    // event grants 2222 (token 8), the wrong lease is dead. Fields are shown when set or changed.
    expect![[r###"
        ## scheduled.early: scheduled attempt=0/3 run_at=now+5000
        promote                => rejected NotDue(run_at=now+5000)
        lease                  => rejected NotAllowed(lease when scheduled)
        heartbeat              => rejected StaleLease(scheduled)
        heartbeat.wrong_lease  => rejected StaleLease(scheduled)
        complete               => rejected StaleLease(scheduled)
        complete.wrong_lease   => rejected StaleLease(scheduled)
        fail                   => rejected StaleLease(scheduled)
        fail.non_retryable     => rejected StaleLease(scheduled)
        fail.retry_after_2s    => rejected StaleLease(scheduled)
        fail.rate_limited      => rejected StaleLease(scheduled)
        fail.rate_limited_after_2s => rejected StaleLease(scheduled)
        expire                 => rejected NotAllowed(expire when scheduled)
        cancel                 => cancelled attempt=0 finished_at=now | history=cancelled | finished
        redrive                => rejected NotAllowed(redrive when scheduled)
        reject                 => rejected NotAllowed(reject when scheduled)
        release                => rejected NotAllowed(release when scheduled)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when scheduled)
        step                   => rejected StaleLease(scheduled)
        step.wrong_lease       => rejected StaleLease(scheduled)
        step.recorded_name     => rejected StaleLease(scheduled)

        ## scheduled.due_now: scheduled attempt=0/3 run_at=now
        promote                => available attempt=0 | history=promoted | became_available
        lease                  => rejected NotAllowed(lease when scheduled)
        heartbeat              => rejected StaleLease(scheduled)
        heartbeat.wrong_lease  => rejected StaleLease(scheduled)
        complete               => rejected StaleLease(scheduled)
        complete.wrong_lease   => rejected StaleLease(scheduled)
        fail                   => rejected StaleLease(scheduled)
        fail.non_retryable     => rejected StaleLease(scheduled)
        fail.retry_after_2s    => rejected StaleLease(scheduled)
        fail.rate_limited      => rejected StaleLease(scheduled)
        fail.rate_limited_after_2s => rejected StaleLease(scheduled)
        expire                 => rejected NotAllowed(expire when scheduled)
        cancel                 => cancelled attempt=0 finished_at=now | history=cancelled | finished
        redrive                => rejected NotAllowed(redrive when scheduled)
        reject                 => rejected NotAllowed(reject when scheduled)
        release                => rejected NotAllowed(release when scheduled)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when scheduled)
        step                   => rejected StaleLease(scheduled)
        step.wrong_lease       => rejected StaleLease(scheduled)
        step.recorded_name     => rejected StaleLease(scheduled)

        ## available: available attempt=0/3 run_at=now-60000
        promote                => rejected NotAllowed(promote when available)
        lease                  => running attempt=1 lease=2222/token=8/deadline=now+30000 | history=leased/token=8/worker=worker-1 | delivered
        heartbeat              => rejected StaleLease(available)
        heartbeat.wrong_lease  => rejected StaleLease(available)
        complete               => rejected StaleLease(available)
        complete.wrong_lease   => rejected StaleLease(available)
        fail                   => rejected StaleLease(available)
        fail.non_retryable     => rejected StaleLease(available)
        fail.retry_after_2s    => rejected StaleLease(available)
        fail.rate_limited      => rejected StaleLease(available)
        fail.rate_limited_after_2s => rejected StaleLease(available)
        expire                 => rejected NotAllowed(expire when available)
        cancel                 => cancelled attempt=0 finished_at=now | history=cancelled | finished
        redrive                => rejected NotAllowed(redrive when available)
        reject                 => rejected NotAllowed(reject when available)
        release                => rejected NotAllowed(release when available)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when available)
        step                   => rejected StaleLease(available)
        step.wrong_lease       => rejected StaleLease(available)
        step.recorded_name     => rejected StaleLease(available)

        ## running: running attempt=1/3 run_at=now-60000 lease=1111/token=7/deadline=now+20000
        promote                => rejected NotAllowed(promote when running)
        lease                  => rejected NotAllowed(lease when running)
        heartbeat              => running attempt=1 lease=1111/token=7/deadline=now+30000 progress=Some("50%") checkpoint=Some("c1") | history=- | lease_extended(deadline=now+30000, cancel_requested=false)
        heartbeat.wrong_lease  => rejected StaleLease(running)
        complete               => completed attempt=1 finished_at=now result=Some("1") | history=completed/token=7/worker=worker-1 | finished
        complete.wrong_lease   => rejected StaleLease(running)
        fail                   => retrying attempt=1 run_at=now+500 last_error="boom" | history=failed/token=7/worker=worker-1/run_at=now+500 | retry_scheduled(now+500)
        fail.non_retryable     => dead attempt=1 dead_reason=non_retryable finished_at=now last_error="boom" | history=failed/token=7/worker=worker-1 | dead_lettered(non_retryable),finished
        fail.retry_after_2s    => retrying attempt=1 run_at=now+2000 last_error="boom" | history=failed/token=7/worker=worker-1/run_at=now+2000 | retry_scheduled(now+2000)
        fail.rate_limited      => retrying attempt=0 run_at=now+500 last_error="429" | history=failed/token=7/worker=worker-1/run_at=now+500 | retry_scheduled(now+500),queue_backoff(now+500)
        fail.rate_limited_after_2s => retrying attempt=0 run_at=now+2000 last_error="429" | history=failed/token=7/worker=worker-1/run_at=now+2000 | retry_scheduled(now+2000),queue_backoff(now+2000)
        expire                 => rejected LeaseLive(deadline=now+20000)
        cancel                 => running attempt=1 lease=1111/token=7/deadline=now+20000 cancel_requested | history=cancel_requested | cancel_requested
        redrive                => rejected NotAllowed(redrive when running)
        reject                 => rejected NotAllowed(reject when running)
        release                => rejected NotAllowed(release when running)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when running)
        step                   => running attempt=1 lease=1111/token=7/deadline=now+20000 | history=step_recorded/token=7/worker=worker-1/step=s2 | step_recorded(s2="2", attempt=1, at=now)
        step.wrong_lease       => rejected StaleLease(running)
        step.recorded_name     => running attempt=1 lease=1111/token=7/deadline=now+20000 | history=step_recorded/token=7/worker=worker-1/step=s1 | step_recorded(s1="\"second\"", attempt=1, at=now)

        ## running.cancel_requested: running attempt=1/3 run_at=now-60000 lease=1111/token=7/deadline=now+20000 cancel_requested
        promote                => rejected NotAllowed(promote when running)
        lease                  => rejected NotAllowed(lease when running)
        heartbeat              => running attempt=1 lease=1111/token=7/deadline=now+30000 cancel_requested progress=Some("50%") checkpoint=Some("c1") | history=- | lease_extended(deadline=now+30000, cancel_requested=true)
        heartbeat.wrong_lease  => rejected StaleLease(running)
        complete               => completed attempt=1 cancel_requested finished_at=now result=Some("1") | history=completed/token=7/worker=worker-1 | finished
        complete.wrong_lease   => rejected StaleLease(running)
        fail                   => cancelled attempt=1 cancel_requested finished_at=now last_error="boom" | history=failed/token=7/worker=worker-1 | finished
        fail.non_retryable     => cancelled attempt=1 cancel_requested finished_at=now last_error="boom" | history=failed/token=7/worker=worker-1 | finished
        fail.retry_after_2s    => cancelled attempt=1 cancel_requested finished_at=now last_error="boom" | history=failed/token=7/worker=worker-1 | finished
        fail.rate_limited      => cancelled attempt=1 cancel_requested finished_at=now last_error="429" | history=failed/token=7/worker=worker-1 | finished
        fail.rate_limited_after_2s => cancelled attempt=1 cancel_requested finished_at=now last_error="429" | history=failed/token=7/worker=worker-1 | finished
        expire                 => rejected LeaseLive(deadline=now+20000)
        cancel                 => running attempt=1 lease=1111/token=7/deadline=now+20000 cancel_requested | history=- | unchanged
        redrive                => rejected NotAllowed(redrive when running)
        reject                 => rejected NotAllowed(reject when running)
        release                => rejected NotAllowed(release when running)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when running)
        step                   => running attempt=1 lease=1111/token=7/deadline=now+20000 cancel_requested | history=step_recorded/token=7/worker=worker-1/step=s2 | step_recorded(s2="2", attempt=1, at=now)
        step.wrong_lease       => rejected StaleLease(running)
        step.recorded_name     => running attempt=1 lease=1111/token=7/deadline=now+20000 cancel_requested | history=step_recorded/token=7/worker=worker-1/step=s1 | step_recorded(s1="\"second\"", attempt=1, at=now)

        ## running.cancel_requested.deadline_passed: running attempt=1/3 run_at=now-60000 lease=1111/token=7/deadline=now-1 cancel_requested
        promote                => rejected NotAllowed(promote when running)
        lease                  => rejected NotAllowed(lease when running)
        heartbeat              => rejected LeaseExpired(deadline=now-1)
        heartbeat.wrong_lease  => rejected StaleLease(running)
        complete               => rejected LeaseExpired(deadline=now-1)
        complete.wrong_lease   => rejected StaleLease(running)
        fail                   => rejected LeaseExpired(deadline=now-1)
        fail.non_retryable     => rejected LeaseExpired(deadline=now-1)
        fail.retry_after_2s    => rejected LeaseExpired(deadline=now-1)
        fail.rate_limited      => rejected LeaseExpired(deadline=now-1)
        fail.rate_limited_after_2s => rejected LeaseExpired(deadline=now-1)
        expire                 => cancelled attempt=1 cancel_requested finished_at=now last_error="lease expired" | history=expired/token=7/worker=worker-1 | finished
        cancel                 => running attempt=1 lease=1111/token=7/deadline=now-1 cancel_requested | history=- | unchanged
        redrive                => rejected NotAllowed(redrive when running)
        reject                 => rejected NotAllowed(reject when running)
        release                => rejected NotAllowed(release when running)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when running)
        step                   => rejected LeaseExpired(deadline=now-1)
        step.wrong_lease       => rejected StaleLease(running)
        step.recorded_name     => rejected LeaseExpired(deadline=now-1)

        ## running.last_attempt: running attempt=3/3 run_at=now-43000 lease=1111/token=7/deadline=now+20000
        promote                => rejected NotAllowed(promote when running)
        lease                  => rejected NotAllowed(lease when running)
        heartbeat              => running attempt=3 lease=1111/token=7/deadline=now+30000 progress=Some("50%") checkpoint=Some("c1") | history=- | lease_extended(deadline=now+30000, cancel_requested=false)
        heartbeat.wrong_lease  => rejected StaleLease(running)
        complete               => completed attempt=3 finished_at=now result=Some("1") | history=completed/token=7/worker=worker-1 | finished
        complete.wrong_lease   => rejected StaleLease(running)
        fail                   => dead attempt=3 dead_reason=failed finished_at=now | history=failed/token=7/worker=worker-1 | dead_lettered(failed),finished
        fail.non_retryable     => dead attempt=3 dead_reason=non_retryable finished_at=now | history=failed/token=7/worker=worker-1 | dead_lettered(non_retryable),finished
        fail.retry_after_2s    => dead attempt=3 dead_reason=failed finished_at=now | history=failed/token=7/worker=worker-1 | dead_lettered(failed),finished
        fail.rate_limited      => retrying attempt=2 run_at=now+2000 last_error="429" | history=failed/token=7/worker=worker-1/run_at=now+2000 | retry_scheduled(now+2000),queue_backoff(now+2000)
        fail.rate_limited_after_2s => retrying attempt=2 run_at=now+2000 last_error="429" | history=failed/token=7/worker=worker-1/run_at=now+2000 | retry_scheduled(now+2000),queue_backoff(now+2000)
        expire                 => rejected LeaseLive(deadline=now+20000)
        cancel                 => running attempt=3 lease=1111/token=7/deadline=now+20000 cancel_requested | history=cancel_requested | cancel_requested
        redrive                => rejected NotAllowed(redrive when running)
        reject                 => rejected NotAllowed(reject when running)
        release                => rejected NotAllowed(release when running)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when running)
        step                   => running attempt=3 lease=1111/token=7/deadline=now+20000 | history=step_recorded/token=7/worker=worker-1/step=s2 | step_recorded(s2="2", attempt=3, at=now)
        step.wrong_lease       => rejected StaleLease(running)
        step.recorded_name     => running attempt=3 lease=1111/token=7/deadline=now+20000 | history=step_recorded/token=7/worker=worker-1/step=s1 | step_recorded(s1="\"second\"", attempt=3, at=now)

        ## running.last_attempt.deadline_passed: running attempt=3/3 run_at=now-43000 lease=1111/token=7/deadline=now-1
        promote                => rejected NotAllowed(promote when running)
        lease                  => rejected NotAllowed(lease when running)
        heartbeat              => rejected LeaseExpired(deadline=now-1)
        heartbeat.wrong_lease  => rejected StaleLease(running)
        complete               => rejected LeaseExpired(deadline=now-1)
        complete.wrong_lease   => rejected StaleLease(running)
        fail                   => rejected LeaseExpired(deadline=now-1)
        fail.non_retryable     => rejected LeaseExpired(deadline=now-1)
        fail.retry_after_2s    => rejected LeaseExpired(deadline=now-1)
        fail.rate_limited      => rejected LeaseExpired(deadline=now-1)
        fail.rate_limited_after_2s => rejected LeaseExpired(deadline=now-1)
        expire                 => dead attempt=3 dead_reason=lease_expired finished_at=now last_error="lease expired" | history=expired/token=7/worker=worker-1 | dead_lettered(lease_expired),finished
        cancel                 => running attempt=3 lease=1111/token=7/deadline=now-1 cancel_requested | history=cancel_requested | cancel_requested
        redrive                => rejected NotAllowed(redrive when running)
        reject                 => rejected NotAllowed(reject when running)
        release                => rejected NotAllowed(release when running)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when running)
        step                   => rejected LeaseExpired(deadline=now-1)
        step.wrong_lease       => rejected StaleLease(running)
        step.recorded_name     => rejected LeaseExpired(deadline=now-1)

        ## running.deadline_now: running attempt=1/3 run_at=now-60000 lease=1111/token=7/deadline=now
        promote                => rejected NotAllowed(promote when running)
        lease                  => rejected NotAllowed(lease when running)
        heartbeat              => rejected LeaseExpired(deadline=now)
        heartbeat.wrong_lease  => rejected StaleLease(running)
        complete               => rejected LeaseExpired(deadline=now)
        complete.wrong_lease   => rejected StaleLease(running)
        fail                   => rejected LeaseExpired(deadline=now)
        fail.non_retryable     => rejected LeaseExpired(deadline=now)
        fail.retry_after_2s    => rejected LeaseExpired(deadline=now)
        fail.rate_limited      => rejected LeaseExpired(deadline=now)
        fail.rate_limited_after_2s => rejected LeaseExpired(deadline=now)
        expire                 => retrying attempt=1 run_at=now+500 last_error="lease expired" | history=expired/token=7/worker=worker-1/run_at=now+500 | retry_scheduled(now+500)
        cancel                 => running attempt=1 lease=1111/token=7/deadline=now cancel_requested | history=cancel_requested | cancel_requested
        redrive                => rejected NotAllowed(redrive when running)
        reject                 => rejected NotAllowed(reject when running)
        release                => rejected NotAllowed(release when running)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when running)
        step                   => rejected LeaseExpired(deadline=now)
        step.wrong_lease       => rejected StaleLease(running)
        step.recorded_name     => rejected LeaseExpired(deadline=now)

        ## running.deadline_passed: running attempt=1/3 run_at=now-60000 lease=1111/token=7/deadline=now-1
        promote                => rejected NotAllowed(promote when running)
        lease                  => rejected NotAllowed(lease when running)
        heartbeat              => rejected LeaseExpired(deadline=now-1)
        heartbeat.wrong_lease  => rejected StaleLease(running)
        complete               => rejected LeaseExpired(deadline=now-1)
        complete.wrong_lease   => rejected StaleLease(running)
        fail                   => rejected LeaseExpired(deadline=now-1)
        fail.non_retryable     => rejected LeaseExpired(deadline=now-1)
        fail.retry_after_2s    => rejected LeaseExpired(deadline=now-1)
        fail.rate_limited      => rejected LeaseExpired(deadline=now-1)
        fail.rate_limited_after_2s => rejected LeaseExpired(deadline=now-1)
        expire                 => retrying attempt=1 run_at=now+500 last_error="lease expired" | history=expired/token=7/worker=worker-1/run_at=now+500 | retry_scheduled(now+500)
        cancel                 => running attempt=1 lease=1111/token=7/deadline=now-1 cancel_requested | history=cancel_requested | cancel_requested
        redrive                => rejected NotAllowed(redrive when running)
        reject                 => rejected NotAllowed(reject when running)
        release                => rejected NotAllowed(release when running)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when running)
        step                   => rejected LeaseExpired(deadline=now-1)
        step.wrong_lease       => rejected StaleLease(running)
        step.recorded_name     => rejected LeaseExpired(deadline=now-1)

        ## running.step_recorded: running attempt=1/3 run_at=now-60000 lease=1111/token=7/deadline=now+20000 step:s1="\"first\""
        promote                => rejected NotAllowed(promote when running)
        lease                  => rejected NotAllowed(lease when running)
        heartbeat              => running attempt=1 lease=1111/token=7/deadline=now+30000 progress=Some("50%") checkpoint=Some("c1") | history=- | lease_extended(deadline=now+30000, cancel_requested=false)
        heartbeat.wrong_lease  => rejected StaleLease(running)
        complete               => completed attempt=1 finished_at=now result=Some("1") | history=completed/token=7/worker=worker-1 | finished
        complete.wrong_lease   => rejected StaleLease(running)
        fail                   => retrying attempt=1 run_at=now+500 last_error="boom" | history=failed/token=7/worker=worker-1/run_at=now+500 | retry_scheduled(now+500)
        fail.non_retryable     => dead attempt=1 dead_reason=non_retryable finished_at=now last_error="boom" | history=failed/token=7/worker=worker-1 | dead_lettered(non_retryable),finished
        fail.retry_after_2s    => retrying attempt=1 run_at=now+2000 last_error="boom" | history=failed/token=7/worker=worker-1/run_at=now+2000 | retry_scheduled(now+2000)
        fail.rate_limited      => retrying attempt=0 run_at=now+500 last_error="429" | history=failed/token=7/worker=worker-1/run_at=now+500 | retry_scheduled(now+500),queue_backoff(now+500)
        fail.rate_limited_after_2s => retrying attempt=0 run_at=now+2000 last_error="429" | history=failed/token=7/worker=worker-1/run_at=now+2000 | retry_scheduled(now+2000),queue_backoff(now+2000)
        expire                 => rejected LeaseLive(deadline=now+20000)
        cancel                 => running attempt=1 lease=1111/token=7/deadline=now+20000 cancel_requested | history=cancel_requested | cancel_requested
        redrive                => rejected NotAllowed(redrive when running)
        reject                 => rejected NotAllowed(reject when running)
        release                => rejected NotAllowed(release when running)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when running)
        step                   => running attempt=1 lease=1111/token=7/deadline=now+20000 | history=step_recorded/token=7/worker=worker-1/step=s2 | step_recorded(s2="2", attempt=1, at=now)
        step.wrong_lease       => rejected StaleLease(running)
        step.recorded_name     => running attempt=1 lease=1111/token=7/deadline=now+20000 | history=- | step_known(s1="\"first\"", attempt=1, at=now-5000)

        ## retrying.early: retrying attempt=1/3 run_at=now+4000
        promote                => rejected NotDue(run_at=now+4000)
        lease                  => rejected NotAllowed(lease when retrying)
        heartbeat              => rejected StaleLease(retrying)
        heartbeat.wrong_lease  => rejected StaleLease(retrying)
        complete               => rejected StaleLease(retrying)
        complete.wrong_lease   => rejected StaleLease(retrying)
        fail                   => rejected StaleLease(retrying)
        fail.non_retryable     => rejected StaleLease(retrying)
        fail.retry_after_2s    => rejected StaleLease(retrying)
        fail.rate_limited      => rejected StaleLease(retrying)
        fail.rate_limited_after_2s => rejected StaleLease(retrying)
        expire                 => rejected NotAllowed(expire when retrying)
        cancel                 => cancelled attempt=1 finished_at=now | history=cancelled | finished
        redrive                => rejected NotAllowed(redrive when retrying)
        reject                 => rejected NotAllowed(reject when retrying)
        release                => rejected NotAllowed(release when retrying)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when retrying)
        step                   => rejected StaleLease(retrying)
        step.wrong_lease       => rejected StaleLease(retrying)
        step.recorded_name     => rejected StaleLease(retrying)

        ## retrying.due: retrying attempt=1/3 run_at=now-5000
        promote                => available attempt=1 | history=promoted | became_available
        lease                  => rejected NotAllowed(lease when retrying)
        heartbeat              => rejected StaleLease(retrying)
        heartbeat.wrong_lease  => rejected StaleLease(retrying)
        complete               => rejected StaleLease(retrying)
        complete.wrong_lease   => rejected StaleLease(retrying)
        fail                   => rejected StaleLease(retrying)
        fail.non_retryable     => rejected StaleLease(retrying)
        fail.retry_after_2s    => rejected StaleLease(retrying)
        fail.rate_limited      => rejected StaleLease(retrying)
        fail.rate_limited_after_2s => rejected StaleLease(retrying)
        expire                 => rejected NotAllowed(expire when retrying)
        cancel                 => cancelled attempt=1 finished_at=now | history=cancelled | finished
        redrive                => rejected NotAllowed(redrive when retrying)
        reject                 => rejected NotAllowed(reject when retrying)
        release                => rejected NotAllowed(release when retrying)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when retrying)
        step                   => rejected StaleLease(retrying)
        step.wrong_lease       => rejected StaleLease(retrying)
        step.recorded_name     => rejected StaleLease(retrying)

        ## retrying.step_recorded: retrying attempt=1/3 run_at=now-3500 step:s1="\"first\""
        promote                => available attempt=1 | history=promoted | became_available
        lease                  => rejected NotAllowed(lease when retrying)
        heartbeat              => rejected StaleLease(retrying)
        heartbeat.wrong_lease  => rejected StaleLease(retrying)
        complete               => rejected StaleLease(retrying)
        complete.wrong_lease   => rejected StaleLease(retrying)
        fail                   => rejected StaleLease(retrying)
        fail.non_retryable     => rejected StaleLease(retrying)
        fail.retry_after_2s    => rejected StaleLease(retrying)
        fail.rate_limited      => rejected StaleLease(retrying)
        fail.rate_limited_after_2s => rejected StaleLease(retrying)
        expire                 => rejected NotAllowed(expire when retrying)
        cancel                 => cancelled attempt=1 finished_at=now | history=cancelled | finished
        redrive                => rejected NotAllowed(redrive when retrying)
        reject                 => rejected NotAllowed(reject when retrying)
        release                => rejected NotAllowed(release when retrying)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when retrying)
        step                   => rejected StaleLease(retrying)
        step.wrong_lease       => rejected StaleLease(retrying)
        step.recorded_name     => rejected StaleLease(retrying)

        ## completed: completed attempt=1/3 run_at=now-60000
        promote                => rejected NotAllowed(promote when completed)
        lease                  => rejected NotAllowed(lease when completed)
        heartbeat              => rejected AlreadyFinished(completed)
        heartbeat.wrong_lease  => rejected AlreadyFinished(completed)
        complete               => rejected AlreadyFinished(completed)
        complete.wrong_lease   => rejected AlreadyFinished(completed)
        fail                   => rejected AlreadyFinished(completed)
        fail.non_retryable     => rejected AlreadyFinished(completed)
        fail.retry_after_2s    => rejected AlreadyFinished(completed)
        fail.rate_limited      => rejected AlreadyFinished(completed)
        fail.rate_limited_after_2s => rejected AlreadyFinished(completed)
        expire                 => rejected NotAllowed(expire when completed)
        cancel                 => rejected AlreadyFinished(completed)
        redrive                => rejected NotAllowed(redrive when completed)
        reject                 => rejected NotAllowed(reject when completed)
        release                => rejected NotAllowed(release when completed)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when completed)
        step                   => rejected AlreadyFinished(completed)
        step.wrong_lease       => rejected AlreadyFinished(completed)
        step.recorded_name     => rejected AlreadyFinished(completed)

        ## dead: dead attempt=3/3 run_at=now-43000 dead_reason=failed
        promote                => rejected NotAllowed(promote when dead)
        lease                  => rejected NotAllowed(lease when dead)
        heartbeat              => rejected AlreadyFinished(dead)
        heartbeat.wrong_lease  => rejected AlreadyFinished(dead)
        complete               => rejected AlreadyFinished(dead)
        complete.wrong_lease   => rejected AlreadyFinished(dead)
        fail                   => rejected AlreadyFinished(dead)
        fail.non_retryable     => rejected AlreadyFinished(dead)
        fail.retry_after_2s    => rejected AlreadyFinished(dead)
        fail.rate_limited      => rejected AlreadyFinished(dead)
        fail.rate_limited_after_2s => rejected AlreadyFinished(dead)
        expire                 => rejected NotAllowed(expire when dead)
        cancel                 => rejected AlreadyFinished(dead)
        redrive                => available attempt=0 run_at=now finished_at=- | history=redriven | became_available
        reject                 => dead attempt=3 dead_reason=rejected last_error="payload at /n: not an integer" | history=rejected | dead_lettered(rejected)
        release                => rejected NotAllowed(release when dead)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when dead)
        step                   => rejected AlreadyFinished(dead)
        step.wrong_lease       => rejected AlreadyFinished(dead)
        step.recorded_name     => rejected AlreadyFinished(dead)

        ## cancelled: cancelled attempt=0/3 run_at=now-60000
        promote                => rejected NotAllowed(promote when cancelled)
        lease                  => rejected NotAllowed(lease when cancelled)
        heartbeat              => rejected AlreadyFinished(cancelled)
        heartbeat.wrong_lease  => rejected AlreadyFinished(cancelled)
        complete               => rejected AlreadyFinished(cancelled)
        complete.wrong_lease   => rejected AlreadyFinished(cancelled)
        fail                   => rejected AlreadyFinished(cancelled)
        fail.non_retryable     => rejected AlreadyFinished(cancelled)
        fail.retry_after_2s    => rejected AlreadyFinished(cancelled)
        fail.rate_limited      => rejected AlreadyFinished(cancelled)
        fail.rate_limited_after_2s => rejected AlreadyFinished(cancelled)
        expire                 => rejected NotAllowed(expire when cancelled)
        cancel                 => cancelled attempt=0 | history=- | unchanged
        redrive                => rejected NotAllowed(redrive when cancelled)
        reject                 => rejected NotAllowed(reject when cancelled)
        release                => rejected NotAllowed(release when cancelled)
        dependency_failed      => rejected NotAllowed(apply a failed dependency to when cancelled)
        step                   => rejected AlreadyFinished(cancelled)
        step.wrong_lease       => rejected AlreadyFinished(cancelled)
        step.recorded_name     => rejected AlreadyFinished(cancelled)

        ## blocked: blocked attempt=0/3 run_at=now-10000
        promote                => rejected NotAllowed(promote when blocked)
        lease                  => rejected NotAllowed(lease when blocked)
        heartbeat              => rejected StaleLease(blocked)
        heartbeat.wrong_lease  => rejected StaleLease(blocked)
        complete               => rejected StaleLease(blocked)
        complete.wrong_lease   => rejected StaleLease(blocked)
        fail                   => rejected StaleLease(blocked)
        fail.non_retryable     => rejected StaleLease(blocked)
        fail.retry_after_2s    => rejected StaleLease(blocked)
        fail.rate_limited      => rejected StaleLease(blocked)
        fail.rate_limited_after_2s => rejected StaleLease(blocked)
        expire                 => rejected NotAllowed(expire when blocked)
        cancel                 => cancelled attempt=0 finished_at=now | history=cancelled | finished
        redrive                => rejected NotAllowed(redrive when blocked)
        reject                 => rejected NotAllowed(reject when blocked)
        release                => available attempt=0 run_at=now | history=released | became_available
        dependency_failed      => cancelled attempt=0 finished_at=now last_error="dependency 9 ended dead" | history=cancelled | finished
        step                   => rejected StaleLease(blocked)
        step.wrong_lease       => rejected StaleLease(blocked)
        step.recorded_name     => rejected StaleLease(blocked)

        ## blocked.run_at_ahead: blocked attempt=0/3 run_at=now+5000
        promote                => rejected NotAllowed(promote when blocked)
        lease                  => rejected NotAllowed(lease when blocked)
        heartbeat              => rejected StaleLease(blocked)
        heartbeat.wrong_lease  => rejected StaleLease(blocked)
        complete               => rejected StaleLease(blocked)
        complete.wrong_lease   => rejected StaleLease(blocked)
        fail                   => rejected StaleLease(blocked)
        fail.non_retryable     => rejected StaleLease(blocked)
        fail.retry_after_2s    => rejected StaleLease(blocked)
        fail.rate_limited      => rejected StaleLease(blocked)
        fail.rate_limited_after_2s => rejected StaleLease(blocked)
        expire                 => rejected NotAllowed(expire when blocked)
        cancel                 => cancelled attempt=0 finished_at=now | history=cancelled | finished
        redrive                => rejected NotAllowed(redrive when blocked)
        reject                 => rejected NotAllowed(reject when blocked)
        release                => scheduled attempt=0 | history=released/run_at=now+5000 | 
        dependency_failed      => cancelled attempt=0 finished_at=now last_error="dependency 9 ended dead" | history=cancelled | finished
        step                   => rejected StaleLease(blocked)
        step.wrong_lease       => rejected StaleLease(blocked)
        step.recorded_name     => rejected StaleLease(blocked)

    "###]].assert_eq(&table());
}

/// The one place the focused tests compare: each test renders its cases as lines.
fn check(lines: impl IntoIterator<Item = String>, expect: Expect) {
    let mut actual = String::new();
    for line in lines {
        actual.push_str(&line);
        actual.push('\n');
    }
    expect.assert_eq(&actual);
}

/// A running job at the given attempt (1-based), with many attempts left.
fn running_at(attempt: u32, backoff: Backoff) -> Job {
    let mut new = new_job();
    new.attempts_max = Some(Limits::ATTEMPTS_MAX_MAX);
    new.backoff = Some(backoff);
    let mut job = new.into_job(JobId(1), ago(60_000), policy(), LEASE_MS);
    job.status.attempt = attempt - 1;
    let w = worker();
    step(&mut job, lease_event(&w, LEASE_HELD, 7), ago(1_000));
    job
}

fn retry_delay(job: &Job, event: Event<'_>, random: u64) -> String {
    match transition(job, event, NOW, random) {
        Ok(t) if t.status.state == JobState::Retrying => t.status.run_at.ms_since(NOW).to_string(),
        Ok(t) => format!("{}", t.status.state),
        Err(r) => format!("rejected {r}"),
    }
}

#[test]
fn backoff_window_per_attempt_with_full_jitter() {
    // Full jitter: the delay after attempt n is uniform in [0, min(cap, base * factor^(n-1))],
    // both ends included; an expired lease backs off exactly like a failure.
    let backoff = Backoff { base_ms: 1_000, factor: 2.0, cap_ms: 60_000 };
    let lines = (1..=9).map(|attempt| {
        let job = running_at(attempt, backoff);
        let fail = |random| retry_delay(&job, fail_event(LEASE_HELD), random);
        let mut expired = job.clone();
        expired.status.lease.as_mut().unwrap().deadline = NOW;
        let expire_max = retry_delay(&expired, Event::Expire, u64::MAX);
        let window = backoff.window_ms(attempt);
        format!(
            "attempt {attempt}: window={window} fail min={} mid={} max={} | expire max={expire_max}",
            fail(0),
            fail(RANDOM),
            fail(u64::MAX),
        )
    });
    check(
        lines,
        expect![[r#"
        attempt 1: window=1000 fail min=0 mid=500 max=1000 | expire max=1000
        attempt 2: window=2000 fail min=0 mid=1000 max=2000 | expire max=2000
        attempt 3: window=4000 fail min=0 mid=2000 max=4000 | expire max=4000
        attempt 4: window=8000 fail min=0 mid=4000 max=8000 | expire max=8000
        attempt 5: window=16000 fail min=0 mid=8000 max=16000 | expire max=16000
        attempt 6: window=32000 fail min=0 mid=16000 max=32000 | expire max=32000
        attempt 7: window=60000 fail min=0 mid=30000 max=60000 | expire max=60000
        attempt 8: window=60000 fail min=0 mid=30000 max=60000 | expire max=60000
        attempt 9: window=60000 fail min=0 mid=30000 max=60000 | expire max=60000
    "#]],
    );

    // Between the ends, every random lands inside the window.
    let job = running_at(4, backoff);
    let mut random = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..1_000 {
        random = random.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let delay: u64 = retry_delay(&job, fail_event(LEASE_HELD), random).parse().unwrap();
        assert!(delay <= 8_000, "delay {delay} outside the window of attempt 4");
    }
}

#[test]
fn retry_after_is_clamped_and_never_grants_an_attempt() {
    let backoff = Backoff { base_ms: 1_000, factor: 2.0, cap_ms: 60_000 };
    let fail = |retryable, ms| Event::Fail {
        lease: LEASE_HELD,
        error: "boom",
        retryable,
        retry_after_ms: ms,
        rate_limited: false,
    };
    let running = running_at(1, backoff);
    let mut last = running_at(1, backoff);
    last.retry.attempts_max = 1;
    let cases: [(&str, &Job, Event<'_>); 8] = [
        ("none (backoff)", &running, fail(true, None)),
        ("0", &running, fail(true, Some(0))),
        ("1234", &running, fail(true, Some(1_234))),
        ("max", &running, fail(true, Some(Limits::RETRY_AFTER_MS_MAX))),
        ("max+1", &running, fail(true, Some(Limits::RETRY_AFTER_MS_MAX + 1))),
        ("u64::MAX", &running, fail(true, Some(u64::MAX))),
        ("1234 non-retryable", &running, fail(false, Some(1_234))),
        ("1234 on the last attempt", &last, fail(true, Some(1_234))),
    ];
    let lines =
        cases.into_iter().map(|(name, job, event)| format!("retry_after {name}: {}", retry_delay(job, event, RANDOM)));
    check(
        lines,
        expect![[r#"
        retry_after none (backoff): 500
        retry_after 0: 0
        retry_after 1234: 1234
        retry_after max: 2592000000
        retry_after max+1: 2592000000
        retry_after u64::MAX: 2592000000
        retry_after 1234 non-retryable: dead
        retry_after 1234 on the last attempt: dead
    "#]],
    );
}

#[test]
fn error_is_truncated_on_a_char_boundary() {
    let job = running_at(1, BACKOFF);
    let max = Limits::ERROR_BYTES_MAX;
    let cases = [
        ("short", "boom".to_string()),
        ("exactly max", "e".repeat(max)),
        ("max+1 ascii", "e".repeat(max + 1)),
        // 'é' is two bytes and would straddle the limit: it goes whole.
        ("two-byte char across the limit", format!("{}é", "e".repeat(max - 1))),
        // '😀' is four bytes starting 2 before the limit.
        ("four-byte char across the limit", format!("{}😀tail", "e".repeat(max - 2))),
    ];
    let lines = cases.into_iter().map(|(name, error)| {
        let event = Event::Fail {
            lease: LEASE_HELD,
            error: &error,
            retryable: true,
            retry_after_ms: None,
            rate_limited: false,
        };
        let t = transition(&job, event, NOW, RANDOM).unwrap();
        let last = t.status.last_error.as_deref().unwrap();
        let in_history = t.history.as_ref().unwrap().error.as_deref().unwrap();
        assert_eq!(last, in_history, "{name}: status and history record the same error");
        assert!(error.starts_with(last), "{name}: truncation keeps a prefix");
        format!(
            "{name}: {} bytes in, {} bytes kept, ends {:?}",
            error.len(),
            last.len(),
            &last[last.len().saturating_sub(3)..]
        )
    });
    check(
        lines,
        expect![[r#"
        short: 4 bytes in, 4 bytes kept, ends "oom"
        exactly max: 8192 bytes in, 8192 bytes kept, ends "eee"
        max+1 ascii: 8193 bytes in, 8192 bytes kept, ends "eee"
        two-byte char across the limit: 8193 bytes in, 8191 bytes kept, ends "eee"
        four-byte char across the limit: 8198 bytes in, 8190 bytes kept, ends "eee"
    "#]],
    );
}

#[test]
fn history_is_capped_keeping_the_first_entry() {
    // A job redriven forever: each cycle is leased, failed (non-retryable, so dead) and redriven.
    let w = worker();
    let mut job = new_job().into_job(JobId(1), Timestamp(0), policy(), LEASE_MS);
    let mut at = Timestamp(0);
    let mut token = 0;
    while job.history.len() + (job.history_dropped as usize) < Limits::HISTORY_ENTRIES_MAX + 10 {
        token += 1;
        at = at.add_ms(1);
        step(&mut job, lease_event(&w, LeaseId(token), token), at);
        at = at.add_ms(1);
        let fail = Event::Fail {
            lease: LeaseId(token),
            error: "poison",
            retryable: false,
            retry_after_ms: None,
            rate_limited: false,
        };
        step(&mut job, fail, at);
        at = at.add_ms(1);
        step(&mut job, Event::Redrive, at);
    }
    let kinds =
        |entries: &[dray_core::HistoryEntry]| entries.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>().join(",");
    let lines = [
        format!("entries={} dropped={} version={}", job.history.len(), job.history_dropped, job.version),
        format!("first: {}", kinds(&job.history[..2])),
        format!("last: {}", kinds(&job.history[job.history.len() - 3..])),
        format!("last at={} token={:?}", job.history.last().unwrap().at, job.history[job.history.len() - 2].token),
    ];
    assert_eq!(job.version as usize, job.history.len() + job.history_dropped as usize);
    check(
        lines,
        expect![[r#"
        entries=256 dropped=12 version=268
        first: enqueued,leased
        last: leased,failed,redriven
        last at=267ms token=Some(FencingToken(89))
    "#]],
    );
}

#[test]
fn new_job_validation_names_field_and_limit() {
    type Edit = fn(&mut NewJob);
    let cases: Vec<(&str, Edit)> = vec![
        ("defaults", |_| {}),
        ("payload too big", |j| j.payload = Payload::new(vec![b'x'; Limits::PAYLOAD_BYTES_MAX + 1])),
        ("payload at the limit", |j| j.payload = Payload::new(vec![b'x'; Limits::PAYLOAD_BYTES_MAX])),
        ("priority too high", |j| j.priority = Limits::PRIORITY_MAX + 1),
        ("priority too low", |j| j.priority = Limits::PRIORITY_MIN - 1),
        ("run_at and delay", |j| {
            j.run_at = Some(NOW);
            j.delay_ms = Some(1);
        }),
        ("delay too long", |j| j.delay_ms = Some(Limits::RUN_AT_AHEAD_MS_MAX + 1)),
        ("run_at too far", |j| j.run_at = Some(NOW.add_ms(Limits::RUN_AT_AHEAD_MS_MAX + 1))),
        ("run_at at the limit", |j| j.run_at = Some(NOW.add_ms(Limits::RUN_AT_AHEAD_MS_MAX))),
        ("run_at in the past", |j| j.run_at = Some(Timestamp(0))),
        ("attempts_max 0", |j| j.attempts_max = Some(0)),
        ("attempts_max too many", |j| j.attempts_max = Some(Limits::ATTEMPTS_MAX_MAX + 1)),
        ("backoff factor", |j| j.backoff = Some(Backoff { factor: 0.5, ..BACKOFF })),
        ("backoff cap below base", |j| j.backoff = Some(Backoff { cap_ms: 10, ..BACKOFF })),
        ("lease_ms too short", |j| j.lease_ms = Some(Limits::LEASE_MS_MIN - 1)),
        ("lease_ms too long", |j| j.lease_ms = Some(Limits::LEASE_MS_MAX + 1)),
        ("idempotency_key empty", |j| j.idempotency_key = Some("".into())),
        ("idempotency_key too long", |j| {
            j.idempotency_key = Some("k".repeat(Limits::IDEMPOTENCY_KEY_BYTES_MAX + 1).into())
        }),
        ("idempotency_key control", |j| j.idempotency_key = Some("a\nb".into())),
        ("ordering_key too long", |j| j.ordering_key = Some("k".repeat(Limits::ORDERING_KEY_BYTES_MAX + 1).into())),
        ("too many tags", |j| j.tags = vec!["t".into(); Limits::TAGS_PER_JOB_MAX + 1]),
        ("tag with space", |j| j.tags = vec!["a b".into()]),
        ("tag too long", |j| j.tags = vec!["t".repeat(Limits::TAG_BYTES_MAX + 1).into()]),
        ("traceparent", |j| j.traceparent = Some("nope".into())),
    ];
    let lines = cases.into_iter().map(|(name, edit)| {
        let mut job = new_job();
        edit(&mut job);
        match job.validate(NOW) {
            Ok(()) => format!("{name}: ok"),
            Err(e) => format!("{name}: {e}"),
        }
    });
    check(
        lines,
        expect![[r#"
        defaults: ok
        payload too big: payload: is 1048577 bytes; the limit is 1048576
        payload at the limit: ok
        priority too high: priority: is 1001; allowed is -1000 to 1000
        priority too low: priority: is -1001; allowed is -1000 to 1000
        run_at and delay: delay_ms: cannot be combined with run_at
        delay too long: delay_ms: is 31622400001; allowed is 0 to 31622400000
        run_at too far: run_at: is 31622400001 ms ahead; the limit is 31622400000 ms
        run_at at the limit: ok
        run_at in the past: ok
        attempts_max 0: attempts_max: is 0; allowed is 1 to 1000
        attempts_max too many: attempts_max: is 1001; allowed is 1 to 1000
        backoff factor: backoff.factor: is 0.5; allowed is 1 to 10
        backoff cap below base: backoff.cap_ms: is 10; allowed is 1000 to 2592000000
        lease_ms too short: lease_ms: is 999; allowed is 1000 to 43200000
        lease_ms too long: lease_ms: is 43200001; allowed is 1000 to 43200000
        idempotency_key empty: idempotency_key: must not be empty
        idempotency_key too long: idempotency_key: is 257 bytes; the limit is 256
        idempotency_key control: idempotency_key: must not contain control characters
        ordering_key too long: ordering_key: is 257 bytes; the limit is 256
        too many tags: tags: has 17 tags; the limit is 16
        tag with space: tags: contains ' '; allowed are ASCII letters, digits and _ - . :
        tag too long: tags: is 65 bytes; the limit is 64
        traceparent: traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
    "#]],
    );
}

#[test]
fn traceparent_validation() {
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let cases = [
        format!("00-{trace}-{parent}-01"),
        format!("00-{trace}-{parent}-00"),
        format!("00-{trace}-{parent}-01-extra"),
        format!("00-{trace}-{parent}-01-"),
        format!("01-{trace}-{parent}-01-extra"),
        format!("01-{trace}-{parent}-01"),
        format!("ff-{trace}-{parent}-01"),
        format!("00-{}-{parent}-01", "0".repeat(32)),
        format!("00-{trace}-{}-01", "0".repeat(16)),
        format!("00-{}-{parent}-01", trace.to_uppercase()),
        format!("00-{trace}-{parent}-1"),
        format!("00-{trace}-{parent}-01x"),
        format!("0-{trace}-{parent}-01"),
        format!("00-{trace}-{parent}"),
        format!("00_{trace}_{parent}_01"),
        String::new(),
        format!("01-{trace}-{parent}-01-{}", "x".repeat(Limits::TRACEPARENT_BYTES_MAX)),
    ];
    let lines = cases.iter().map(|tp| {
        let shown = if tp.len() > 80 { format!("<{} bytes>", tp.len()) } else { format!("{tp:?}") };
        match validate_traceparent(tp) {
            Ok(()) => format!("{shown}: ok"),
            Err(e) => format!("{shown}: {e}"),
        }
    });
    check(
        lines,
        expect![[r#"
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01": ok
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00": ok
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra": ok
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01": ok
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        "": traceparent: is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)
        <312 bytes>: traceparent: is 312 bytes; the limit is 256
    "#]],
    );
}

/// The steps of a job, as one line.
fn steps_line(job: &Job) -> String {
    let steps: Vec<String> = job.steps.iter().map(|s| format!("{}={:?}@{}", s.name, s.result, s.attempt)).collect();
    format!("steps=[{}] count={} bytes={}", steps.join(" "), job.steps.len(), job.steps.bytes())
}

#[test]
fn steps_are_memoized_across_retries_expiry_and_redrive() {
    // A job with two attempts: steps recorded by the first are there for the second, then for
    // the attempt after a redrive; a name recorded again keeps its first result.
    let w = worker();
    let mut new = new_job();
    new.attempts_max = Some(2);
    let mut job = new.into_job(JobId(1), ago(60_000), policy(), LEASE_MS);
    let mut lines = Vec::new();
    let record = |job: &mut Job, lease, name: &str, result: &str, at| {
        let t = transition(job, step_event(lease, name, result), at, RANDOM).unwrap();
        let (step, recorded) = t.step().expect("a step event answers with its step");
        let line = format!(
            "{name}={result} -> {} {:?} (attempt {}) history={}",
            if recorded { "recorded" } else { "known" },
            step.result,
            step.attempt,
            t.history.as_ref().map_or("-", |h| h.kind.as_str()),
        );
        job.apply(t);
        line
    };
    step(&mut job, lease_event(&w, LeaseId(1), 1), ago(50_000));
    lines.push(record(&mut job, LeaseId(1), "fetch", "{\"page\":1}", ago(49_000)));
    lines.push(record(&mut job, LeaseId(1), "summarize", "\"short\"", ago(48_000)));
    lines.push(record(&mut job, LeaseId(1), "fetch", "{\"page\":99}", ago(47_000)));
    step(&mut job, fail_event(LeaseId(1)), ago(46_000));
    step(&mut job, Event::PromoteNow, ago(45_000));
    step(&mut job, lease_event(&w, LeaseId(2), 2), ago(44_000));
    lines.push(record(&mut job, LeaseId(2), "summarize", "\"other\"", ago(43_000)));
    lines.push(record(&mut job, LeaseId(2), "translate", "\"kurz\"", ago(42_000)));
    // The second attempt's lease runs out: its last attempt, so the job is dead.
    step(&mut job, Event::Expire, ago(44_000 - LEASE_MS));
    lines.push(format!("after expiry: {} {}", job.state(), steps_line(&job)));
    step(&mut job, Event::Redrive, NOW);
    step(&mut job, lease_event(&w, LeaseId(3), 3), NOW);
    lines.push(record(&mut job, LeaseId(3), "fetch", "{\"page\":3}", NOW));
    lines.push(record(&mut job, LeaseId(3), "publish", "true", NOW));
    lines.push(format!("after redrive: attempt {} {}", job.status.attempt, steps_line(&job)));
    let entries: Vec<String> = job
        .history
        .iter()
        .filter(|h| h.kind == HistoryKind::StepRecorded)
        .map(|h| format!("{}@{}/token={}", h.error.as_deref().unwrap(), h.attempt, h.token.unwrap()))
        .collect();
    lines.push(format!("history steps: {}", entries.join(" ")));
    assert_eq!(job.version as usize, job.history.len() + job.history_dropped as usize);
    check(
        lines,
        expect![[r#"
            fetch={"page":1} -> recorded "{\"page\":1}" (attempt 1) history=step_recorded
            summarize="short" -> recorded "\"short\"" (attempt 1) history=step_recorded
            fetch={"page":99} -> known "{\"page\":1}" (attempt 1) history=-
            summarize="other" -> known "\"short\"" (attempt 1) history=-
            translate="kurz" -> recorded "\"kurz\"" (attempt 2) history=step_recorded
            after expiry: dead steps=[fetch="{\"page\":1}"@1 summarize="\"short\""@1 translate="\"kurz\""@2] count=3 bytes=46
            fetch={"page":3} -> known "{\"page\":1}" (attempt 1) history=-
            publish=true -> recorded "true" (attempt 1) history=step_recorded
            after redrive: attempt 1 steps=[fetch="{\"page\":1}"@1 summarize="\"short\""@1 translate="\"kurz\""@2 publish="true"@1] count=4 bytes=57
            history steps: fetch@1/token=1 summarize@1/token=1 translate@2/token=2 publish@1/token=3
        "#]],
    );
}

#[test]
fn step_limits_per_job_name_the_field_and_the_limit() {
    let w = worker();
    let base = new_job().into_job(JobId(1), ago(60_000), policy(), LEASE_MS);
    let leased = |mut job: Job| {
        step(&mut job, lease_event(&w, LEASE_HELD, 7), ago(1_000));
        job
    };
    let attempt =
        |job: &Job, name: &str, result: &str| match transition(job, step_event(LEASE_HELD, name, result), NOW, 0) {
            Ok(t) => match t.step() {
                Some((_, true)) => "recorded".to_string(),
                Some((s, false)) => format!("known {:?}", s.result),
                None => "no step".to_string(),
            },
            Err(r) => format!("rejected {r}"),
        };
    let mut full = base.clone();
    let steps = (0..Limits::STEPS_PER_JOB_MAX)
        .map(|i| dray_core::Step {
            name: format!("s{i}").into(),
            result: Payload::new(&b"1"[..]),
            at: ago(2_000),
            attempt: 1,
        })
        .collect();
    full.steps = dray_core::Steps::from_steps(steps);
    let full = leased(full);
    let mut heavy = base.clone();
    let big = format!("\"{}\"", "x".repeat(Limits::STEP_RESULT_BYTES_MAX - 2));
    // As many big steps as fit with room to spare for a small one, not for another big one.
    let steps = (0..Limits::STEPS_BYTES_PER_JOB_MAX / big.len() - 1)
        .map(|i| dray_core::Step {
            name: format!("b{i}").into(),
            result: Payload::new(big.as_bytes().to_vec()),
            at: ago(2_000),
            attempt: 1,
        })
        .collect();
    heavy.steps = dray_core::Steps::from_steps(steps);
    let heavy = leased(heavy);
    let lines = [
        format!("full, new name: {}", attempt(&full, "one more", "1")),
        // First write wins before any bound: a retried record of a kept step is answered.
        format!("full, recorded name: {}", attempt(&full, "s7", "2")),
        format!("heavy ({} bytes), small step: {}", heavy.steps.bytes(), attempt(&heavy, "tiny", "1")),
        format!("heavy, big step: {}", attempt(&heavy, "big", &big)),
        format!("heavy, recorded name: known={}", attempt(&heavy, "b0", "1").starts_with("known")),
    ];
    check(
        lines,
        expect![[r#"
            full, new name: rejected name: is a new step, but the job holds 1000 steps already; the limit is 1000 steps per job
            full, recorded name: known "1"
            heavy (8126547 bytes), small step: recorded
            heavy, big step: rejected result: would bring the job's steps (names and results) to 8388694 bytes; the limit is 8388608 bytes per job
            heavy, recorded name: known=true
        "#]],
    );
}
