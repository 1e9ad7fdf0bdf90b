//! Checks shared by the crash and fault tests.

use dray_core::{FencingToken, HistoryKind, Job, JobState};

/// Replays a job's history as a state machine: every entry follows from the one before, the
/// status matches the last entry, lease tokens strictly increase, attempts stay within
/// `attempts_max`, and a job is delivered again only after its lease expired or failed. With
/// `retryable_only`, a failure leads to `dead` only at the last attempt.
pub fn check_history(job: &Job, retryable_only: bool) -> Result<(), String> {
    use HistoryKind as K;
    use JobState as S;
    let max = job.retry.attempts_max;
    let h = &job.history;
    if job.version as usize != h.len() + job.history_dropped as usize {
        return Err(format!(
            "version {} but {} history entries and {} dropped",
            job.version,
            h.len(),
            job.history_dropped
        ));
    }
    let first = h.first().ok_or("no history")?;
    if first.kind != K::Enqueued || first.attempt != 0 || !matches!(first.state, S::Available | S::Scheduled) {
        return Err(format!("history starts with {first:?}"));
    }
    let last_state = h.last().map(|e| e.state).unwrap_or(first.state);
    if job.status.state != last_state {
        return Err(format!("the job is {} but its last history entry says {last_state}", job.status.state));
    }
    if job.status.attempt > max {
        return Err(format!("attempt {} of at most {max}", job.status.attempt));
    }
    if job.history_dropped > 0 {
        return Ok(()); // The middle is gone: nothing more to replay.
    }
    let (mut state, mut attempt) = (first.state, 0u32);
    let mut lease: Option<FencingToken> = None;
    let mut token_max: Option<FencingToken> = None;
    let mut cancel_requested = false;
    for (i, e) in h.iter().enumerate().skip(1) {
        let follows = match e.kind {
            K::Enqueued => false,
            K::Promoted => {
                matches!(state, S::Scheduled | S::Retrying) && e.state == S::Available && e.attempt == attempt
            }
            K::Leased => {
                state == S::Available
                    && e.state == S::Running
                    && e.attempt == attempt + 1
                    && e.attempt <= max
                    && e.token.is_some()
                    && e.token > token_max
            }
            K::Completed => state == S::Running && e.state == S::Completed && e.attempt == attempt && e.token == lease,
            K::Failed | K::Expired => {
                state == S::Running
                    && e.attempt == attempt
                    && e.token == lease
                    && match e.state {
                        // A requested cancel wins over a retry or the dead-letter queue.
                        _ if cancel_requested => e.state == S::Cancelled,
                        S::Retrying => attempt < max,
                        S::Dead => attempt == max || (e.kind == K::Failed && !retryable_only),
                        _ => false,
                    }
            }
            K::CancelRequested => state == S::Running && e.state == S::Running && !cancel_requested,
            K::Cancelled => {
                matches!(state, S::Scheduled | S::Available | S::Retrying | S::Blocked) && e.state == S::Cancelled
            }
            K::Released => state == S::Blocked && matches!(e.state, S::Available | S::Scheduled),
            K::Redriven => state == S::Dead && e.state == S::Available && e.attempt == 0,
            K::Rejected => state == S::Dead && e.state == S::Dead && e.attempt == attempt,
            K::StepRecorded => {
                state == S::Running
                    && e.state == S::Running
                    && e.attempt == attempt
                    && e.token == lease
                    && e.error.as_deref().is_some_and(|name| job.steps.get(name).is_some())
            }
        };
        if !follows {
            return Err(format!(
                "history entry {i} ({:?} to {} at attempt {}, token {:?}) cannot follow {state} at attempt {attempt} \
                 (lease token {lease:?}): {h:?}",
                e.kind, e.state, e.attempt, e.token
            ));
        }
        if e.kind == K::Leased {
            lease = e.token;
            token_max = e.token;
        }
        if e.state != S::Running {
            lease = None;
        }
        cancel_requested = e.kind == K::CancelRequested || (cancel_requested && e.kind != K::Redriven);
        state = e.state;
        attempt = e.attempt;
    }
    if job.status.attempt != attempt {
        return Err(format!("the job is at attempt {} but its history at {attempt}", job.status.attempt));
    }
    match (&job.status.lease, lease) {
        (Some(held), Some(token)) if held.token == token => Ok(()),
        (None, None) => Ok(()),
        (held, token) => Err(format!("the job holds lease {held:?} but its history says token {token:?}")),
    }
}
