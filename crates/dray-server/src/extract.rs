//! Extractors that turn every way a request can be wrong into a problem+json answer, so axum's
//! plain-text rejections never reach a user.
//!
//! JSON is parsed with axum's `Json::from_bytes` (serde_json behind `serde_path_to_error`), whose
//! error text is `path: message`; the path becomes the problem's `field`. Syntax errors (and
//! nesting deeper than serde_json's 128 levels) are 400; well-formed JSON of the wrong shape is 422.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;
use dray_core::{JobId, QueueName};
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::problem::ApiError;

/// serde_json's nesting limit, named in the error for a body nested deeper.
const JSON_DEPTH_MAX: usize = 128;

/// A JSON request body of type `T`.
#[derive(Debug)]
pub(crate) struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<App> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &App) -> Result<Self, ApiError> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            let text = content_type.to_str().unwrap_or("");
            if !crate::guard::is_json(text) {
                return Err(ApiError::unsupported_media_type(Some(text)));
            }
        }
        let bytes = Bytes::from_request(req, app).await.map_err(|r| {
            if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::body_too_large(app.body_bytes_max())
            } else {
                ApiError::unreadable_body()
            }
        })?;
        parse_json(&bytes).map(Body)
    }
}

pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde_json enforces its limit on typed fields, but not inside raw values (a payload), which
    // are kept as sent and handed to workers whose parsers may have a lower limit.
    if let Some(at) = nesting_past_limit(bytes) {
        return Err(ApiError::malformed(
            format!("JSON nesting is deeper than {JSON_DEPTH_MAX} levels (at byte {at})"),
            None,
        ));
    }
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(_) => return Err(ApiError::unprocessable("the body must be a JSON object", None)),
    }
    match axum::Json::<T>::from_bytes(bytes) {
        Ok(axum::Json(value)) => Ok(value),
        Err(rejection) => {
            let text = std::error::Error::source(&rejection).map(ToString::to_string).unwrap_or_default();
            let (field, message) = split_path(&text);
            match rejection {
                JsonRejection::JsonDataError(_) => Err(ApiError::unprocessable(message, field)),
                _ if message.starts_with("recursion limit exceeded") => Err(ApiError::malformed(
                    format!("JSON nesting is deeper than {JSON_DEPTH_MAX} levels ({message})"),
                    field,
                )),
                _ => Err(ApiError::malformed(format!("not valid JSON: {message}"), field)),
            }
        }
    }
}

/// Where the JSON text first nests deeper than [`JSON_DEPTH_MAX`], if it does. A scan of the bytes
/// (strings skipped); text that is not JSON is left for the parser to refuse.
fn nesting_past_limit(bytes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > JSON_DEPTH_MAX {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Splits `jobs[3].queue: invalid type: ...` into the field and the message. The field of a
/// missing or unknown key is the key itself, under the path where it was found.
fn split_path(text: &str) -> (Option<String>, String) {
    let (mut path, message) = match text.split_once(": ") {
        Some((path, message)) if is_path(path) => (Some(path.to_string()), message.to_string()),
        _ => (None, text.to_string()),
    };
    for prefix in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((key, _)) = rest.split_once('`')
        {
            path = Some(match path {
                Some(p) if !p.ends_with(key) => format!("{p}.{key}"),
                Some(p) => p,
                None => key.to_string(),
            });
        }
    }
    (path, message)
}

/// A `serde_path_to_error` path: field names, `[index]` and `?` for what it could not name.
fn is_path(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '?'))
}

/// A query string of type `T` (unknown parameters refused by `T`).
#[derive(Debug)]
pub(crate) struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::try_from_uri(&parts.uri) {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => {
                let text = match &rejection {
                    QueryRejection::FailedToDeserializeQueryString(e) => {
                        std::error::Error::source(e).map(ToString::to_string).unwrap_or_default()
                    }
                    other => other.body_text(),
                };
                let (field, message) = split_path(&text);
                Err(ApiError::unprocessable(format!("query string: {message}"), field))
            }
        }
    }
}

/// The `{id}` of a job route.
#[derive(Debug)]
pub(crate) struct JobIdParam(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::unprocessable("must be a job id (a whole number)", Some("id".into())))?;
        // Digits only: `u64::from_str` also takes a leading `+`, so `/v1/jobs/+1` was job 1.
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| text.parse::<u64>().ok()).flatten().map(|id| JobIdParam(JobId(id))).ok_or_else(|| {
            ApiError::unprocessable(
                format!("{text:?} is not a job id (a whole number from 0 to {})", u64::MAX),
                Some("id".into()),
            )
        })
    }
}

/// The `{name}` of a queue route, validated like every queue name.
#[derive(Debug)]
pub(crate) struct QueueNameParam(pub QueueName);

impl<S: Send + Sync> FromRequestParts<S> for QueueNameParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::unprocessable("must be a queue name", Some("name".into())))?;
        QueueName::new(&text).map(QueueNameParam).map_err(|e| ApiError::unprocessable(e.message, Some("name".into())))
    }
}

/// The W3C `traceparent` header, if sent. Its format is checked with the job it goes into.
#[derive(Debug)]
pub(crate) struct TraceParent(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for TraceParent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.headers.get("traceparent") {
            None => Ok(TraceParent(None)),
            Some(value) => value.to_str().map(|s| TraceParent(Some(s.to_string()))).map_err(|_| {
                ApiError::unprocessable("the traceparent header is not ASCII", Some("traceparent".into()))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use dray_api::{EnqueueBatch, EnqueueJob, JobQuery};

    use super::*;

    fn problem<T: DeserializeOwned + std::fmt::Debug>(json: &str) -> (u16, Option<String>, String) {
        let e = parse_json::<T>(json.as_bytes()).unwrap_err();
        let p = e.problem();
        (p.status, p.field, p.detail)
    }

    #[test]
    fn serde_errors_name_the_field() {
        let cases: &[(&str, u16, Option<&str>)] = &[
            (r#"{"queue":"q","payload":1,"colour":"red"}"#, 422, Some("colour")),
            (r#"{"queue":1,"payload":1}"#, 422, Some("queue")),
            (r#"{"payload":1}"#, 422, Some("queue")),
            (r#"{"queue":"q","payload":1,"priority":"high"}"#, 422, Some("priority")),
            (
                r#"{"queue":"q","payload":1,"backoff":{"base_ms":1,"factor":2,"cap_ms":1,"x":1}}"#,
                422,
                Some("backoff.x"),
            ),
            (r#"{"queue":"q","payload":1,"priority":99999}"#, 422, Some("priority")),
            (r#"[]"#, 422, None),
            (r#"{"queue":"q","payload":"#, 400, Some("payload")),
            (r#"["q",1]"#, 422, None),
            (r#"{"queue":"q","payload":1} trailing"#, 400, None),
            ("", 400, None),
        ];
        for &(json, status, field) in cases {
            let (s, f, detail) = problem::<EnqueueJob>(json);
            assert_eq!((s, f.as_deref()), (status, field), "{json}: {detail}");
        }
        let (s, f, _) = problem::<EnqueueBatch>(r#"{"jobs":[{"queue":"q","payload":1},{"queue":"q"}]}"#);
        assert_eq!((s, f.as_deref()), (422, Some("jobs[1].payload")));
        let (s, f, _) = problem::<EnqueueBatch>(r#"{"jobs":[{"queue":"q","payload":1,"tags":["a",2]}]}"#);
        assert_eq!((s, f.as_deref()), (422, Some("jobs[0].tags[1]")));
    }

    #[test]
    fn nesting_past_the_limit_names_the_depth() {
        let nested = |n: usize| format!(r#"{{"queue":"q","payload":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
        let (s, _, detail) = problem::<EnqueueJob>(&nested(200));
        assert_eq!(s, 400);
        assert!(detail.contains("deeper than 128 levels"), "{detail}");
        // The body's own object is the first level.
        assert!(parse_json::<EnqueueJob>(nested(127).as_bytes()).is_ok());
        assert_eq!(problem::<EnqueueJob>(&nested(128)).0, 400);
        // Brackets inside strings do not count.
        let in_string = format!(r#"{{"queue":"q","payload":"{}\"["}}"#, "[".repeat(300));
        assert!(parse_json::<EnqueueJob>(in_string.as_bytes()).is_ok());
        let (s, _, detail) =
            problem::<EnqueueJob>(&format!(r#"{{"queue":"q","payload":1,"tags":{}]]}}"#, "[".repeat(130)));
        assert_eq!(s, 400, "{detail}");
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let uri: axum::http::Uri = "/v1/jobs?limit=ten".parse().unwrap();
        let mut parts = axum::http::Request::builder().uri(uri).body(()).unwrap().into_parts().0;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let e = rt.block_on(Query::<JobQuery>::from_request_parts(&mut parts, &())).unwrap_err();
        assert_eq!((e.problem().status, e.problem().field.as_deref()), (422, Some("limit")), "{:?}", e.problem());
        let uri: axum::http::Uri = "/v1/jobs?colour=red".parse().unwrap();
        let mut parts = axum::http::Request::builder().uri(uri).body(()).unwrap().into_parts().0;
        let e = rt.block_on(Query::<JobQuery>::from_request_parts(&mut parts, &())).unwrap_err();
        assert_eq!(e.problem().field.as_deref(), Some("colour"), "{:?}", e.problem());
    }
}
