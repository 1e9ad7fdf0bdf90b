//! What an API token may do: scopes (`read`, `enqueue`, `work`, `admin`), each optionally limited
//! to the queues whose names match a pattern, and the pure rule that decides whether a set of
//! scopes allows an action on a queue.
//!
//! Written as text, a scope is `kind` or `kind:pattern` (`enqueue:billing.*`). A pattern is a
//! glob over the whole queue name: `*` matches any run of characters (none included, dots
//! included), every other character matches itself; there are no other wildcards and no escapes
//! (queue names cannot hold `*`). `billing.*` matches `billing.invoices` but not `billing`;
//! `*.emails` matches `eu.emails`; `*` alone is the same as no pattern.
//!
//! `admin` implies every other kind: `admin` allows everything, `admin:team-a.*` allows every
//! action on the queues matching `team-a.*` (but not the actions that are not about one queue,
//! such as managing tokens, which need an unlimited `admin`).
//!
//! Nothing here knows about tokens' storage, HTTP or secrets.

use std::fmt;

use crate::{Invalid, Limits};

/// The kinds of scope, from the least to the most powerful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKind {
    /// See jobs, queues, dead letters, workers and metrics.
    Read,
    /// Enqueue jobs.
    Enqueue,
    /// Lease jobs and report on them (heartbeat, complete, fail).
    Work,
    /// Everything: queue configuration, cancel, redrive, discard, tokens.
    Admin,
}

impl ScopeKind {
    pub const ALL: [ScopeKind; 4] = [ScopeKind::Read, ScopeKind::Enqueue, ScopeKind::Work, ScopeKind::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Read => "read",
            ScopeKind::Enqueue => "enqueue",
            ScopeKind::Work => "work",
            ScopeKind::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<ScopeKind> {
        ScopeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether a scope of this kind grants `needed`: its own kind, or anything for `admin`.
    pub fn grants(self, needed: ScopeKind) -> bool {
        self == needed || self == ScopeKind::Admin
    }
}

impl fmt::Display for ScopeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A glob over queue names; see the module's documentation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueuePattern(Box<str>);

impl QueuePattern {
    pub fn new(pattern: &str) -> Result<QueuePattern, Invalid> {
        if pattern.is_empty() {
            return Err(Invalid::new("pattern", "must not be empty (leave out `:pattern` for every queue)"));
        }
        if pattern.len() > Limits::QUEUE_NAME_BYTES_MAX {
            return Err(Invalid::new(
                "pattern",
                format!("is {} bytes; the limit is {}", pattern.len(), Limits::QUEUE_NAME_BYTES_MAX),
            ));
        }
        if let Some(c) =
            pattern.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '*')))
        {
            return Err(Invalid::new(
                "pattern",
                format!(
                    "contains {c:?}; allowed are the characters of queue names (ASCII letters, digits, _ - . :) and *"
                ),
            ));
        }
        Ok(QueuePattern(pattern.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `queue` matches the whole pattern. Linear in the lengths (greedy matching with one
    /// backtrack point, as for `*`-only globs), so a hostile pattern costs no more than a fair one.
    pub fn matches(&self, queue: &str) -> bool {
        let (p, s) = (self.0.as_bytes(), queue.as_bytes());
        let (mut pi, mut si) = (0, 0);
        // The last `*` seen, and where in `s` it started matching.
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, si));
                pi += 1;
            } else if pi < p.len() && p[pi] == s[si] {
                pi += 1;
                si += 1;
            } else if let Some((sp, ss)) = star {
                // Let the last `*` take one more character and try again after it.
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

/// One scope: a kind, for every queue or for the queues matching a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub kind: ScopeKind,
    /// `None`: every queue, and the actions that concern no single queue.
    pub pattern: Option<QueuePattern>,
}

impl Scope {
    /// Scopes one token may carry.
    pub const PER_TOKEN_MAX: usize = 32;

    pub fn all(kind: ScopeKind) -> Scope {
        Scope { kind, pattern: None }
    }

    /// Parses `kind` or `kind:pattern`. The error names `field`.
    pub fn parse(text: &str) -> Result<Scope, Invalid> {
        let (kind_text, pattern) = match text.split_once(':') {
            Some((k, p)) => (k, Some(p)),
            None => (text, None),
        };
        let kind = ScopeKind::parse(kind_text).ok_or_else(|| {
            Invalid::new(
                "scopes",
                format!("{text:?}: the scope must be read, enqueue, work or admin, optionally followed by :pattern"),
            )
        })?;
        let pattern = match pattern {
            None => None,
            // `*` alone means every queue: store it as "no pattern", so it also grants the
            // actions that concern no single queue.
            Some("*") => None,
            Some(p) => {
                Some(QueuePattern::new(p).map_err(|e| Invalid::new("scopes", format!("{text:?}: {}", e.message)))?)
            }
        };
        Ok(Scope { kind, pattern })
    }

    /// Whether this scope allows `needed` on `queue`.
    pub fn allows(&self, needed: ScopeKind, queue: &str) -> bool {
        self.kind.grants(needed) && self.pattern.as_ref().is_none_or(|p| p.matches(queue))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pattern {
            None => f.write_str(self.kind.as_str()),
            Some(p) => write!(f, "{}:{}", self.kind, p.as_str()),
        }
    }
}

/// Parses a token's scopes: at least one, at most [`Scope::PER_TOKEN_MAX`], duplicates dropped.
pub fn scopes_parse<S: AsRef<str>>(texts: &[S]) -> Result<Vec<Scope>, Invalid> {
    if texts.is_empty() {
        return Err(Invalid::new("scopes", "must name at least one scope (read, enqueue, work or admin)"));
    }
    if texts.len() > Scope::PER_TOKEN_MAX {
        return Err(Invalid::new(
            "scopes",
            format!("has {} scopes; the limit is {}", texts.len(), Scope::PER_TOKEN_MAX),
        ));
    }
    let mut scopes: Vec<Scope> = Vec::with_capacity(texts.len());
    for text in texts {
        let scope = Scope::parse(text.as_ref())?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

/// Whether any of `scopes` allows `needed` on `queue`.
pub fn scopes_allow(scopes: &[Scope], needed: ScopeKind, queue: &str) -> bool {
    scopes.iter().any(|s| s.allows(needed, queue))
}

/// Whether any of `scopes` allows `needed` on some queue (a coarse check before the queues are
/// known).
pub fn scopes_allow_some(scopes: &[Scope], needed: ScopeKind) -> bool {
    scopes.iter().any(|s| s.kind.grants(needed))
}

/// Whether any of `scopes` allows `needed` on every queue (and on what concerns no one queue).
pub fn scopes_allow_all(scopes: &[Scope], needed: ScopeKind) -> bool {
    scopes.iter().any(|s| s.kind.grants(needed) && s.pattern.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names() {
        // (pattern, queue, matches)
        let cases = [
            ("billing.*", "billing.invoices", true),
            ("billing.*", "billing.", true),
            ("billing.*", "billing", false),
            ("billing.*", "xbilling.invoices", false),
            ("*.emails", "eu.emails", true),
            ("*.emails", "eu.emails.x", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbYcZ", false),
            ("a*b*c", "acb", false),
            ("**", "", true),
            ("exact", "exact", true),
            ("exact", "exact2", false),
            ("team:a*", "team:abc", true),
            ("*a", "aaaa", true),
            ("*ab", "aaab", true),
            ("*ab", "aaba", false),
        ];
        for (pattern, queue, want) in cases {
            assert_eq!(QueuePattern::new(pattern).unwrap().matches(queue), want, "{pattern} ~ {queue}");
        }
    }

    #[test]
    fn scopes_parse_and_print() {
        for text in ["read", "enqueue:billing.*", "work:q", "admin", "admin:team:a.*"] {
            assert_eq!(Scope::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Scope::parse("read:*").unwrap(), Scope::all(ScopeKind::Read));
        for bad in ["", "write", "read:", "read:a b", "READ", "enqueue:bill/ing"] {
            let e = Scope::parse(bad).unwrap_err();
            assert_eq!(e.field, "scopes", "{bad}");
        }
        assert!(scopes_parse::<&str>(&[]).is_err());
        let many: Vec<String> = (0..=Scope::PER_TOKEN_MAX).map(|i| format!("read:q{i}")).collect();
        assert!(scopes_parse(&many).unwrap_err().message.contains("limit is 32"));
        assert_eq!(scopes_parse(&["read", "read"]).unwrap().len(), 1);
    }

    #[test]
    fn admin_implies_everything_within_its_pattern() {
        let scopes = scopes_parse(&["admin:team-a.*", "read"]).unwrap();
        assert!(scopes_allow(&scopes, ScopeKind::Enqueue, "team-a.x"));
        assert!(!scopes_allow(&scopes, ScopeKind::Enqueue, "team-b.x"));
        assert!(scopes_allow(&scopes, ScopeKind::Read, "team-b.x"));
        assert!(scopes_allow_some(&scopes, ScopeKind::Admin));
        assert!(!scopes_allow_all(&scopes, ScopeKind::Admin));
        assert!(scopes_allow_all(&scopes, ScopeKind::Read));
        let work = scopes_parse(&["work:jobs.*"]).unwrap();
        assert!(!scopes_allow_some(&work, ScopeKind::Read));
        assert!(scopes_allow(&work, ScopeKind::Work, "jobs.1"));
    }
}
