//! Exit statuses and error reports: the one place that turns an error into what a script sees.
//!
//! A command returns `anyhow::Error`; the cause that decides the exit status is found in its
//! chain: a `dray_client::Error` (an HTTP status, an unreachable server, a wait that ended
//! before its job did) or a [`Failure`] the CLI found itself (a bad line in a JSON Lines file, a
//! job waited for that ended dead or cancelled: [`job_ended`]). Anything else is status 1.

use std::fmt;

use serde_json::json;

/// What the process exits with. Documented in `dray --help` (`cli::EXIT_STATUS_HELP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Other = 1,
    /// Clap exits with 2 by itself on a bad command line; also a bad `--server` URL.
    Usage = 2,
    NotFound = 3,
    Conflict = 4,
    Invalid = 5,
    Unavailable = 6,
    /// 401 or 403: no token, a bad one, or one without the scope needed.
    Unauthorized = 7,
    /// `--wait`: the job ended dead.
    JobDead = 8,
    /// `--wait`: the job ended cancelled.
    JobCancelled = 9,
    /// `--wait`: the job was not finished when the wait ended.
    WaitTimeout = 10,
}

impl Exit {
    pub fn from_status(status: u16) -> Exit {
        match status {
            404 => Exit::NotFound,
            409 => Exit::Conflict,
            400 | 413 | 422 => Exit::Invalid,
            503 => Exit::Unavailable,
            401 | 403 => Exit::Unauthorized,
            _ => Exit::Other,
        }
    }
}

/// A failure the CLI detects itself, shaped like a problem so it is reported like one.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub title: String,
    pub detail: String,
    pub field: Option<String>,
    pub job: Option<u64>,
}

impl Failure {
    pub fn invalid(title: impl Into<String>, detail: impl Into<String>) -> Failure {
        Failure { exit: Exit::Invalid, title: title.into(), detail: detail.into(), field: None, job: None }
    }

    pub fn field(mut self, field: impl Into<String>) -> Failure {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.title, self.detail)
    }
}

impl std::error::Error for Failure {}

/// The outcome of a job a command waited for (`--wait`) and found finished: completed is
/// success; dead (8) and cancelled (9) are failures naming the job and why.
pub fn job_ended(job: &dray_api::Job) -> Result<(), Failure> {
    let (exit, title) = match job.state {
        dray_api::State::Dead => (Exit::JobDead, "Job dead"),
        dray_api::State::Cancelled => (Exit::JobCancelled, "Job cancelled"),
        _ => return Ok(()),
    };
    let mut detail = format!("job {} ended {}", job.id, job.state.as_str());
    if let Some(reason) = job.dead_reason {
        detail.push_str(&format!(" ({})", crate::cmd::jobs::word(&reason)));
    }
    if let Some(error) = &job.last_error {
        detail.push_str(&format!("; last error: {error}"));
    }
    Err(Failure { exit, title: title.to_owned(), detail, field: None, job: Some(job.id) })
}

/// A problem as reported on stderr.
#[derive(Debug)]
struct Report {
    exit: Exit,
    kind: Option<String>,
    title: String,
    status: Option<u16>,
    detail: String,
    field: Option<String>,
    job: Option<u64>,
}

fn classify(err: &anyhow::Error, server: &str) -> Report {
    for cause in err.chain() {
        if let Some(err) = cause.downcast_ref::<dray_client::Error>() {
            return classify_client(err, server);
        }
        if let Some(failure) = cause.downcast_ref::<Failure>() {
            return Report {
                exit: failure.exit,
                kind: None,
                title: failure.title.clone(),
                status: None,
                detail: failure.detail.clone(),
                field: failure.field.clone(),
                job: failure.job,
            };
        }
    }
    Report {
        exit: Exit::Other,
        kind: None,
        title: "Error".to_owned(),
        status: None,
        detail: chain_text(err),
        field: None,
        job: None,
    }
}

fn classify_client(err: &dray_client::Error, server: &str) -> Report {
    match err {
        dray_client::Error::Api { status, problem } => {
            let status = *status;
            Report {
                exit: Exit::from_status(status),
                kind: Some(problem.kind.clone()),
                title: problem.title.clone(),
                status: Some(status),
                detail: problem.detail.clone(),
                field: problem.field.clone(),
                job: problem.job,
            }
        }
        dray_client::Error::Transport { source, .. } if source.is_connect() => Report {
            exit: Exit::Unavailable,
            kind: None,
            title: "Server unreachable".to_owned(),
            status: None,
            // The request never reached the server: nothing happened, whatever the call was.
            detail: format!(
                "cannot connect to {server}: {}; is `dray serve` running at {server}?",
                os_reason(&source.to_string())
            ),
            field: None,
            job: None,
        },
        dray_client::Error::Transport { context, source } => Report {
            exit: Exit::Unavailable,
            kind: None,
            title: "No answer from the server".to_owned(),
            status: None,
            detail: transport_detail(context, &source.to_string(), server),
            field: None,
            job: None,
        },
        // The only client-side check before sending is the server URL: a usage error.
        dray_client::Error::Invalid { field, .. } if field == "base_url" => Report {
            exit: Exit::Usage,
            kind: None,
            title: "Invalid --server".to_owned(),
            status: None,
            detail: err.to_string(),
            field: Some("--server".to_owned()),
            job: None,
        },
        dray_client::Error::Invalid { field, .. } => Report {
            exit: Exit::Invalid,
            kind: None,
            title: "Invalid input".to_owned(),
            status: None,
            detail: err.to_string(),
            field: Some(field.clone()),
            job: None,
        },
        dray_client::Error::WaitTimeout { job, .. } => Report {
            exit: Exit::WaitTimeout,
            kind: None,
            title: "Job not finished".to_owned(),
            status: None,
            // "job 7 is still running after waiting 30s"
            detail: format!("{err}; it goes on: wait again with `dray jobs show {} --wait DURATION`", job.id),
            field: None,
            job: Some(job.id),
        },
        other => Report {
            exit: Exit::Other,
            kind: None,
            title: "Error".to_owned(),
            status: None,
            detail: other.to_string(),
            field: None,
            job: None,
        },
    }
}

/// The OS's reason at the end of a transport error's chain ("Connection refused (os error 111)").
fn os_reason(text: &str) -> &str {
    text.rsplit(": ").next().unwrap_or_default()
}

/// What a lost answer means for the call `context` (`GET /v1/jobs/7`, `POST /v1/jobs`): a read
/// changed nothing and can simply be run again; a write may or may not have been applied, and only
/// an enqueue has an idempotency key to retry with safely.
fn transport_detail(context: &str, source: &str, server: &str) -> String {
    let reason = os_reason(source);
    let (method, path) = context.split_once(' ').unwrap_or((context, ""));
    let path = path.trim_end_matches('/');
    if method == "GET" || method == "HEAD" {
        return format!("{context} at {server}: {reason}; a read changes nothing: run it again");
    }
    if path.ends_with("/v1/jobs") || path.ends_with("/v1/jobs/batch") {
        return format!(
            "{context} at {server}: {reason}; the outcome is unknown: retry with the same idempotency key \
             (without one, check with `dray jobs list` first)"
        );
    }
    format!(
        "{context} at {server}: {reason}; the outcome is unknown: it may or may not have been applied, check before retrying"
    )
}

/// `err` and its causes joined by ": ", leaving out a cause whose text the previous one already
/// ends with (an error type that prints its source and also returns it from `source()` would
/// otherwise say everything twice).
fn chain_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.ends_with(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// Prints `err` to stderr (as JSON with `json`) and returns the exit status it maps to.
pub fn report(err: &anyhow::Error, server: &str, json: bool) -> Exit {
    let report = classify(err, server);
    // What the command was doing when it failed ("batch of lines 1001-2000"): every context above
    // the classified cause.
    let contexts: Vec<String> = err
        .chain()
        .take_while(|cause| {
            cause.downcast_ref::<dray_client::Error>().is_none() && cause.downcast_ref::<Failure>().is_none()
        })
        .map(ToString::to_string)
        .collect();
    let classified = contexts.len() < err.chain().count();
    if json {
        let mut value = json!({
            "type": report.kind.as_deref().unwrap_or("about:blank"),
            "title": report.title,
            "detail": report.detail,
            "exit_code": report.exit as u8,
        });
        let object = value.as_object_mut().expect("a JSON object");
        if let Some(status) = report.status {
            object.insert("status".to_owned(), json!(status));
        }
        if let Some(field) = &report.field {
            object.insert("field".to_owned(), json!(field));
        }
        if let Some(job) = report.job {
            object.insert("job".to_owned(), json!(job));
        }
        if classified && !contexts.is_empty() {
            object.insert("context".to_owned(), json!(contexts.join(": ")));
        }
        eprintln!("{value}");
    } else {
        let mut line = String::from("error: ");
        if classified {
            for context in &contexts {
                line.push_str(context);
                line.push_str(": ");
            }
            line.push_str(&report.title);
            if !report.detail.is_empty() && report.detail != report.title {
                line.push_str(": ");
                line.push_str(&report.detail);
            }
        } else {
            line.push_str(&report.detail);
        }
        eprintln!("{line}");
        if let Some(field) = &report.field {
            eprintln!("  field: {field}");
        }
        if let Some(job) = report.job {
            eprintln!("  job: {job}");
        }
    }
    report.exit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_documented_exit_codes() {
        let cases = [(400, 5), (401, 7), (403, 7), (404, 3), (409, 4), (413, 5), (422, 5), (500, 1), (503, 6)];
        for (status, exit) in cases {
            assert_eq!(Exit::from_status(status) as u8, exit, "HTTP {status}");
        }
    }

    // Regression (issue #18, defect 6): the data-dir lock error printed its text twice (an error
    // that prints its source and also returns it from `source()`).
    #[test]
    fn chain_text_says_each_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "lock data directory /d: {}", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = anyhow::Error::new(Outer(std::io::Error::other("the lock /d/LOCK is held")))
            .context("cannot open the store in /d");
        assert_eq!(chain_text(&err), "cannot open the store in /d: lock data directory /d: the lock /d/LOCK is held");
    }

    // Regression (issue #18, defect 6): reads said "outcome unknown (retry with the same
    // idempotency key)" when their answer was lost.
    #[test]
    fn lost_answers_are_explained_by_what_the_call_was() {
        let source = "error sending request: connection closed before message completed";
        let read = transport_detail("GET /v1/jobs/7", source, "http://h");
        assert_eq!(
            read,
            "GET /v1/jobs/7 at http://h: connection closed before message completed; a read changes nothing: run it again"
        );
        let enqueue = transport_detail("POST /v1/jobs", source, "http://h");
        assert!(enqueue.contains("retry with the same idempotency key"), "{enqueue}");
        assert!(transport_detail("POST /v1/jobs/batch", source, "http://h").contains("idempotency key"));
        let cancel = transport_detail("POST /v1/jobs/7/cancel", source, "http://h");
        assert!(cancel.contains("may or may not have been applied") && !cancel.contains("idempotency"), "{cancel}");
    }

    #[test]
    fn failure_in_context_chain_decides_exit() {
        let err = anyhow::Error::new(Failure::invalid("Invalid JSON", "line 3: expected value"))
            .context("reading jobs.jsonl");
        assert_eq!(report(&err, "http://x", true), Exit::Invalid);
        let err = anyhow::anyhow!("something else");
        assert_eq!(report(&err, "http://x", false), Exit::Other);
    }
}
