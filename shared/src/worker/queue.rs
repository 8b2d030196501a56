//! What a worker asks of the queue, whichever way it reaches it, and how the answers are classified.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::{
    ClaimedTask, CompleteTaskRequest, FailTaskRequest, HeartbeatRequest, HeartbeatResponse,
    NewLogEntry, RegisterWorkerRequest, Task,
};

/// Why the queue did not do what a worker asked. The variants are the classification the worker acts on:
/// retry later, register again, stop this run (or give up this report), or give up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The queue could not be reached or failed for now (network, database, a 5xx or 429 answer): retried
    /// with backoff.
    #[error("the queue is unavailable: {0}")]
    Unavailable(String),
    /// The queue does not know this worker (it was removed, or the database was replaced): register again.
    #[error("the queue does not know this worker")]
    UnknownWorker,
    /// The queue refused this request for good, e.g. a report for a run the worker no longer holds
    /// (`task_not_held`, `stale_attempt`, `task_cancelled`, …) or a claim beyond `max_parallel_tasks`: the
    /// run stops, the report is dropped, the claim waits.
    #[error("refused ({kind}): {detail}")]
    Refused { kind: String, detail: String },
    /// A request the queue will never accept as it is (a bug, or a setting the server rejects).
    #[error("{0}")]
    Fatal(String),
}

/// What a worker asks of the queue. The worker daemon implements it over HTTP, the API server's internal
/// workers in-process over the store; [`super::Worker`] is written once against it. Each value is bound to
/// one worker id.
pub trait Queue: Send + Sync + 'static {
    /// The id of the worker this queue handle speaks for.
    fn worker_id(&self) -> &str;

    /// Registers the worker, or registers it again after a restart. Answers how long a lease lasts without a
    /// heartbeat.
    fn register(
        &self,
        req: &RegisterWorkerRequest,
    ) -> impl Future<Output = Result<Duration, QueueError>> + Send;

    /// A sign of life, with the tasks the worker holds; the answer lists those to stop.
    fn heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> impl Future<Output = Result<HeartbeatResponse, QueueError>> + Send;

    /// The next task this worker may run, waiting up to `wait` for one (long poll); `None` when none came
    /// or when `stop` fired first.
    fn claim(
        &self,
        wait: Duration,
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<Option<ClaimedTask>, QueueError>> + Send;

    /// Appends log entries of a run the worker holds.
    fn report_logs(
        &self,
        task_id: Uuid,
        attempt: i32,
        lease_id: Uuid,
        entries: &[NewLogEntry],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// The run finished with a result.
    fn complete(
        &self,
        task_id: Uuid,
        req: &CompleteTaskRequest,
    ) -> impl Future<Output = Result<Task, QueueError>> + Send;

    /// The run failed or timed out.
    fn fail(
        &self,
        task_id: Uuid,
        req: &FailTaskRequest,
    ) -> impl Future<Output = Result<Task, QueueError>> + Send;

    /// The worker stopped the run because it stops, or its runner could not run here (`reason`): the task
    /// goes back to the queue, attempt not counted.
    fn release(
        &self,
        task_id: Uuid,
        attempt: i32,
        lease_id: Uuid,
        reason: Option<&str>,
    ) -> impl Future<Output = Result<Task, QueueError>> + Send;
}
