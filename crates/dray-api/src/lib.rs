//! Dray's wire format: the JSON bodies of the HTTP API (`/v1`), their OpenAPI schemas, and the
//! hand-written conversions between them and the core's types.
//!
//! This is the only crate that derives `Serialize`/`Deserialize`. A core type or a storage row is
//! never the public JSON: each body here is converted at the edge, and every conversion from the
//! wire checks its input and names the field it refuses. Request bodies refuse unknown fields.
//! Timestamps are RFC 3339 strings in UTC; durations are integers named `*_ms`. Lease ids are
//! strings (64 random bits do not fit a JavaScript number); job ids and fencing tokens are numbers.
//! This crate does no I/O and holds no business logic.

pub mod convert;
mod lock;
mod schedule;
mod types;

pub use convert::{lease_id_parse, lease_id_string, timestamp_parse, timestamp_string};
pub use lock::*;
pub use schedule::*;
pub use types::*;
