//! One module per command group. Each takes parsed arguments and a `dray_client::Client`, calls
//! the server and prints the answer; none decides anything the server should.

pub mod dlq;
pub mod enqueue;
pub mod jobs;
pub mod locks;
pub mod meta;
pub mod migrate;
pub mod queues;
pub mod schedules;
pub mod serve;
pub mod tokens;
pub mod work;
