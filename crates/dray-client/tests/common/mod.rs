//! What the SDK's integration tests share: an in-process server on a temporary directory, a
//! worker running in the background, and bounded waits for a job to reach a state.

#![allow(dead_code)] // each test binary uses a different part

use std::future::Future;
use std::time::Duration;

use dray_client::api::{Job, State};
use dray_client::{Client, Worker, WorkerBuilder, WorkerReport};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every wait in these tests is bounded by this: generous for a loaded CI machine, and a failure
/// instead of a hang when something is wrong.
pub const WAIT_MAX: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub client: Client,
    running: Option<dray_server::Running>,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

pub async fn server() -> TestServer {
    let dir = tempfile::tempdir().expect("temporary directory");
    let running = dray_server::start(dray_server::Config::for_test(dir.path())).await.expect("server starts");
    let client = Client::new(format!("http://{}", running.addr)).expect("client");
    TestServer { client, addr: running.addr, running: Some(running), dir }
}

impl TestServer {
    pub fn worker(&self) -> WorkerBuilder {
        Worker::builder(self.client.clone()).worker_id("test-worker").lease_wait(Duration::from_secs(5))
    }

    pub async fn stop(mut self) {
        self.down().await;
    }

    /// Stops the server (the store stays on disk).
    pub async fn down(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("server stops cleanly");
        }
    }

    /// Starts the server again on the same directory and port, as after a restart.
    pub async fn up(&mut self) {
        assert!(self.running.is_none(), "already up");
        let args = dray_server::ServeArgs {
            listen: Some(self.addr.to_string()),
            data_dir: Some(self.dir.path().to_path_buf()),
            ..Default::default()
        };
        let config = dray_server::Config::from_args(args).expect("config");
        self.running = Some(dray_server::start(config).await.expect("server starts again"));
    }
}

/// A worker running in a task of its own, stopped by [`Running::stop`].
pub struct RunningWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<WorkerReport, dray_client::Error>>,
}

pub fn spawn(worker: Worker) -> RunningWorker {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    RunningWorker { stop, task }
}

impl RunningWorker {
    /// Resolves the worker's shutdown future and waits (bounded) for `run` to return.
    pub async fn stop(self) -> WorkerReport {
        let _ = self.stop.send(());
        within(self.task).await.expect("worker task").expect("worker run")
    }
}

/// `future`, or a panic after [`WAIT_MAX`].
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT_MAX, future).await.expect("timed out")
}

/// Polls the job until `done` holds (bounded by [`WAIT_MAX`]).
pub async fn wait_job(client: &Client, id: u64, what: &str, mut done: impl FnMut(&Job) -> bool) -> Job {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let job = client.job(id).await.expect("job lookup");
        if done(&job) {
            return job;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {id} never became {what}: {job:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn wait_state(client: &Client, id: u64, state: State) -> Job {
    wait_job(client, id, &format!("{state:?}"), |job| job.state == state).await
}
