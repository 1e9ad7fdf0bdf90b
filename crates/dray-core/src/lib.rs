//! Dray's job model as pure data and pure functions.
//!
//! This crate owns identifiers, [`JobState`], the events that move a job between states, the one
//! [`transition`] function every state change goes through, the retry/backoff policy, schedule
//! rules with their time-zone maths ([`cron`]) and every named limit. It never does I/O, never reads the clock (`now` is always a parameter), never draws
//! random numbers (randomness is a parameter), knows nothing of async runtimes, and does not
//! serialize anything (it reads JSON only to compare payloads by value and to refuse text no
//! worker could read back, in [`json`]): the wire format belongs to the API crate, the storage format to each store.

pub mod breaker;
pub mod cron;
pub mod dependency;
pub mod flow;
pub mod ids;
pub mod job;
pub mod json;
pub mod limits;
pub mod lock;
pub mod retry;
pub mod schedule;
pub mod scope;
pub mod step;
pub mod time;
pub mod transition;

pub use breaker::{Breaker, BreakerOutcome, BreakerPolicy, BreakerState, BreakerView};
pub use dependency::{Dependency, OnDependencyFailure};
pub use flow::Rate;
pub use ids::{FencingToken, JobId, LeaseId, QueueName, WorkerId};
pub use job::{DeadReason, HistoryEntry, HistoryKind, Job, JobState, JobStatus, Lease, NewJob, Payload};
pub use limits::{Invalid, Limits};
pub use lock::{Lock, LockName, LockOwner};
pub use retry::{Backoff, RetryPolicy};
pub use schedule::{Misfire, Overlap, Schedule, ScheduleName, ScheduleSpec, ScheduleTick};
pub use scope::{QueuePattern, Scope, ScopeKind};
pub use step::{Step, Steps};
pub use time::Timestamp;
pub use transition::{Effect, Event, Rejection, Transition, transition};
