//! Browser defences, on for every request with or without tokens: a web page the operator happens
//! to open must not be able to drive Dray, not on a public address and not on localhost.
//!
//! Three checks, before any route runs (and before a body is read):
//! - **Host.** A name that is not configured (`--allowed-hosts`), not a loopback name and not an
//!   IP address is refused with 421: this is what stops DNS rebinding, where a page on
//!   `evil.example` re-points its own name at 127.0.0.1 and so becomes "same origin" with Dray.
//! - **Origin.** A request a browser marks with an `Origin` other than the server's own (or one
//!   listed in `--allowed-origins`) is refused with 403. Clients that are not browsers send none.
//! - **Content type.** Every POST, PUT and PATCH must say `Content-Type: application/json`, body
//!   or not (415). An HTML form or a CORS-"simple" `fetch` cannot send that type without a CORS
//!   preflight, and Dray never answers a preflight for a foreign origin. DELETE always needs a
//!   preflight from a browser.
//!
//! Nothing here decides who may do what: that is the tokens' job.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::ApiError;

/// What the checks allow besides the defaults, from the configuration.
#[derive(Clone, Debug, Default)]
pub(crate) struct Guard {
    /// Host names (lower case, no port) this server answers to besides loopback names and IP
    /// addresses.
    hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`, lower case) whose pages may call this server.
    origins: Vec<String>,
}

impl Guard {
    pub fn new(hosts: &[String], origins: &[String]) -> Guard {
        Guard {
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            origins: origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect(),
        }
    }

    /// The first check a request fails, if any.
    fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = match headers.get(header::HOST) {
            // HTTP/1.0 has no Host: such a client is not a browser.
            None => None,
            Some(value) => {
                let text = value.to_str().map_err(|_| ApiError::misdirected("(not ASCII)"))?;
                if !self.host_allowed(text) {
                    return Err(ApiError::misdirected(text));
                }
                Some(text)
            }
        };
        if let Some(origin) = headers.get(header::ORIGIN) {
            let text = origin.to_str().unwrap_or("(not ASCII)");
            if !self.origin_allowed(text, host) {
                return Err(ApiError::forbidden_origin(text));
            }
        }
        if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            match headers.get(header::CONTENT_TYPE) {
                None => return Err(ApiError::unsupported_media_type(None)),
                Some(value) => {
                    let text = value.to_str().unwrap_or("(not ASCII)");
                    if !is_json(text) {
                        return Err(ApiError::unsupported_media_type(Some(text)));
                    }
                }
            }
        }
        Ok(())
    }

    fn host_allowed(&self, host_header: &str) -> bool {
        let Some(name) = host_name(host_header) else { return false };
        // An address cannot be re-pointed by DNS: a page can only reach it under that address as
        // its own origin, which the Origin check then compares.
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == "localhost" || name.ends_with(".localhost") || self.hosts.contains(&name)
    }

    fn origin_allowed(&self, origin: &str, host_header: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        // The server's own origin: the page was served by this server under the name the request
        // uses (already checked above). `null` (a sandboxed frame, a file) never matches.
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        match (authority, host_header) {
            (Some(authority), Some(host)) => authority == host.to_ascii_lowercase(),
            _ => false,
        }
    }
}

/// The host of a `Host` header without its port; `None` for something that is not one.
fn host_name(value: &str) -> Option<&str> {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        return (after.is_empty() || after.strip_prefix(':').is_some_and(is_port)).then_some(inside);
    }
    let name = match value.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return None,
        None => value,
    };
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    valid.then_some(name)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `application/json`, optionally with `charset=utf-8` (JSON is UTF-8: RFC 8259), and nothing
/// else: not `text/plain`, not another charset, not `application/merge-patch+json` (whose
/// meaning Dray does not implement).
pub(crate) fn is_json(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|param| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let value = value.trim().trim_matches('"');
        name.trim().eq_ignore_ascii_case("charset") && (value.eq_ignore_ascii_case("utf-8"))
    })
}

/// The middleware: refuses a request that fails a check, before its route (or its body) is read.
pub(crate) async fn layer(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.check(request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn check(guard: &Guard, method: Method, headers: &[(&str, &str)]) -> Result<(), u16> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        guard.check(&method, &map).map_err(|e| e.problem().status)
    }

    #[test]
    fn hosts() {
        let guard = Guard::new(&["dray.internal".into()], &[]);
        let json = ("content-type", "application/json");
        for host in [
            "localhost:7700",
            "127.0.0.1:7700",
            "[::1]:7700",
            "LOCALHOST",
            "a.localhost",
            "10.1.2.3",
            "dray.internal:80",
        ] {
            assert_eq!(check(&guard, Method::GET, &[("host", host)]), Ok(()), "{host}");
        }
        // DNS rebinding: the attacker's own name, now pointing at 127.0.0.1.
        for host in ["evil.example:7700", "evil.example", "localhost.evil.example", "dray.internal.evil", "a b", "x:y"]
        {
            assert_eq!(check(&guard, Method::POST, &[("host", host), json]), Err(421), "{host}");
        }
        assert_eq!(check(&guard, Method::GET, &[]), Ok(()), "no Host (HTTP/1.0)");
    }

    #[test]
    fn origins() {
        let guard = Guard::new(&[], &["https://ops.example.com".into()]);
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:7700");
        assert_eq!(check(&guard, Method::POST, &[host, json, ("origin", "http://127.0.0.1:7700")]), Ok(()));
        assert_eq!(check(&guard, Method::POST, &[host, json, ("origin", "https://ops.example.com")]), Ok(()));
        for origin in ["http://evil.example", "null", "http://127.0.0.1:7701", "http://localhost:7700", "file://"] {
            assert_eq!(check(&guard, Method::POST, &[host, json, ("origin", origin)]), Err(403), "{origin}");
        }
        assert_eq!(check(&guard, Method::GET, &[host, ("origin", "http://evil.example")]), Err(403));
    }

    #[test]
    fn content_types() {
        let host = ("host", "localhost");
        for ok in ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=\"UTF-8\""] {
            assert_eq!(check(&guard_default(), Method::POST, &[host, ("content-type", ok)]), Ok(()), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin1",
            "application/merge-patch+json",
            "application/problem+json",
            "application/jsonx",
        ] {
            assert_eq!(check(&guard_default(), Method::POST, &[host, ("content-type", bad)]), Err(415), "{bad}");
            assert_eq!(check(&guard_default(), Method::PUT, &[host, ("content-type", bad)]), Err(415), "{bad}");
        }
        assert_eq!(check(&guard_default(), Method::POST, &[host]), Err(415), "a POST without a content type");
        assert_eq!(check(&guard_default(), Method::GET, &[host]), Ok(()));
        assert_eq!(check(&guard_default(), Method::DELETE, &[host]), Ok(()));
    }

    fn guard_default() -> Guard {
        Guard::default()
    }
}
