//! Identifiers. Names supplied by users are validated once, here, and carried as types afterwards.

use std::fmt;
use std::sync::Arc;

use crate::limits::{Invalid, Limits};

/// A job's id: assigned by the store, unique within it, increasing in enqueue order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

/// Strictly increases with every lease grant, across restarts and nodes. A worker hands it to
/// downstream systems so they can reject writes from a worker whose lease was superseded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

/// Identifies one lease. Unlike the fencing token it is not guessable: a worker proves it holds
/// the lease by presenting it with every heartbeat, completion and failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Checks a user-supplied name: non-empty, at most `bytes_max` bytes, and made of ASCII letters,
/// digits and `_ - . :` so it is safe in URLs, metric labels, file names and logs.
pub fn validate_name(field: &'static str, value: &str, bytes_max: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if value.len() > bytes_max {
        return Err(Invalid::new(field, format!("is {} bytes; the limit is {bytes_max}", value.len())));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))) {
        return Err(Invalid::new(field, format!("contains {c:?}; allowed are ASCII letters, digits and _ - . :")));
    }
    Ok(())
}

/// A queue's name. Cheap to clone (shared), validated on construction.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueName(Arc<str>);

impl QueueName {
    pub fn new(name: &str) -> Result<QueueName, Invalid> {
        validate_name("queue", name, Limits::QUEUE_NAME_BYTES_MAX)?;
        Ok(QueueName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A worker's self-chosen name (host and process, say), recorded in job history.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WorkerId(Arc<str>);

impl WorkerId {
    pub fn new(name: &str) -> Result<WorkerId, Invalid> {
        validate_name("worker", name, Limits::WORKER_ID_BYTES_MAX)?;
        Ok(WorkerId(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(QueueName::new("emails.send:v2-eu_1").is_ok());
        let err = QueueName::new("").unwrap_err();
        assert_eq!(err.to_string(), "queue: must not be empty");
        let err = QueueName::new("a b").unwrap_err();
        assert_eq!(err.to_string(), "queue: contains ' '; allowed are ASCII letters, digits and _ - . :");
        let long = "q".repeat(Limits::QUEUE_NAME_BYTES_MAX + 1);
        let err = QueueName::new(&long).unwrap_err();
        assert_eq!(err.to_string(), "queue: is 129 bytes; the limit is 128");
        assert!(QueueName::new(&long[1..]).is_ok());
    }
}
