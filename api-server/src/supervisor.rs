//! Internal workers: workers inside the API server process. Each is the shared [`Worker`] of
//! `task_executor_shared::worker`, exactly as the daemon runs it, over an in-process [`LocalQueue`]: it is
//! registered in the workers table like any worker, heartbeats, and claims and reports through the same
//! [`Dispatcher`] as the HTTP handlers. The supervisor only starts, scales and stops them, without losing
//! work.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use task_executor_shared::{
    InstanceId, WorkerId, WorkerStatus,
    api::{
        ClaimedTask, CompleteTaskRequest, FailTaskRequest, HeartbeatRequest, HeartbeatResponse,
        NewLogEntry, RegisterWorkerRequest, ReportLogsRequest, Task, WorkerCapabilities,
    },
    runner::RunnerArgs,
    worker::{Queue, QueueError, Settings, Shutdown, Unobserved, Worker},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    dispatch::Dispatcher,
    store::{
        StoreError,
        queue::{Outcome, RunRef},
        workers,
    },
};

/// The most internal workers one server runs.
pub const MAX_INTERNAL_WORKERS: usize = 64;

/// How long an internal worker's claim waits for a task before it looks again.
const CLAIM_WAIT: Duration = Duration::from_secs(30);

/// The queue as an internal worker reaches it: the dispatcher, in-process.
pub struct LocalQueue {
    dispatcher: Dispatcher,
    worker_id: String,
}

impl LocalQueue {
    fn run(&self, attempt: i32, lease_id: Uuid) -> RunRef<'_> {
        RunRef::reported(&self.worker_id, attempt, lease_id)
    }
}

/// Store errors as the worker classifies them.
fn queue_error(e: StoreError) -> QueueError {
    match e {
        StoreError::Db(e) => QueueError::Unavailable(e.to_string()),
        e @ (StoreError::TooMany { .. } | StoreError::QueueFull { .. }) => {
            QueueError::Unavailable(e.to_string())
        }
        StoreError::WorkerNotFound(_) | StoreError::WorkerOffline(_) => QueueError::UnknownWorker,
        StoreError::BatchNotFound(id) => QueueError::Fatal(format!("batch {id} not found")),
        StoreError::TaskNotFound(id) => QueueError::Refused {
            kind: "task_not_found".to_owned(),
            detail: format!("task {id} not found"),
        },
        StoreError::Conflict { kind, detail } => QueueError::Refused {
            kind: kind.to_owned(),
            detail,
        },
        StoreError::Invalid(detail) => QueueError::Fatal(detail),
    }
}

impl Queue for LocalQueue {
    fn worker_id(&self) -> &str {
        &self.worker_id
    }

    async fn register(&self, req: &RegisterWorkerRequest) -> Result<Duration, QueueError> {
        self.dispatcher.register(req).await.map_err(queue_error)?;
        Ok(self
            .dispatcher
            .lease
            .heartbeat_timeout
            .to_std()
            .unwrap_or_default())
    }

    async fn heartbeat(&self, req: &HeartbeatRequest) -> Result<HeartbeatResponse, QueueError> {
        let out = self
            .dispatcher
            .heartbeat(&self.worker_id, req)
            .await
            .map_err(queue_error)?;
        Ok(HeartbeatResponse {
            message: "Heartbeat received".to_owned(),
            timestamp: out.at,
            cancel_task_ids: out.cancel_task_ids,
        })
    }

    async fn claim(
        &self,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<ClaimedTask>, QueueError> {
        let claimed = self
            .dispatcher
            .claim(&self.worker_id, wait, stop)
            .await
            .map_err(queue_error)?;
        Ok(claimed.map(|t| ClaimedTask {
            lease_id: t.lease_id.expect("a claim sets a lease id"),
            task: t.into(),
        }))
    }

    async fn report_logs(
        &self,
        task_id: Uuid,
        attempt: i32,
        lease_id: Uuid,
        entries: &[NewLogEntry],
    ) -> Result<(), QueueError> {
        let req = ReportLogsRequest {
            attempt,
            lease_id,
            entries: entries.to_vec(),
        };
        self.dispatcher
            .report_logs(&self.worker_id, task_id, req)
            .await
            .map(|_| ())
            .map_err(queue_error)
    }

    async fn complete(&self, task_id: Uuid, req: &CompleteTaskRequest) -> Result<Task, QueueError> {
        let outcome = Outcome::Completed(req.result.clone());
        self.dispatcher
            .finish(task_id, self.run(req.attempt, req.lease_id), outcome)
            .await
            .map(Into::into)
            .map_err(queue_error)
    }

    async fn fail(&self, task_id: Uuid, req: &FailTaskRequest) -> Result<Task, QueueError> {
        let outcome = Outcome::from(req);
        self.dispatcher
            .finish(task_id, self.run(req.attempt, req.lease_id), outcome)
            .await
            .map(Into::into)
            .map_err(queue_error)
    }

    async fn release(
        &self,
        task_id: Uuid,
        attempt: i32,
        lease_id: Uuid,
        reason: Option<&str>,
    ) -> Result<Task, QueueError> {
        self.dispatcher
            .release(task_id, self.run(attempt, lease_id), reason)
            .await
            .map(Into::into)
            .map_err(queue_error)
    }
}

/// What the supervisor needs from the server.
#[derive(Clone)]
pub struct WorkerEnv {
    pub dispatcher: Dispatcher,
    pub runner: RunnerArgs,
    pub prefix: String,
    pub clusters: Vec<String>,
    pub heartbeat_interval: Duration,
    /// This API server process as the instance of its internal workers: stable across its restarts (host and
    /// listen address), different for another replica.
    pub instance_id: String,
}

struct Handle {
    id: String,
    worker: Arc<Worker<LocalQueue>>,
    shutdown: Shutdown,
    join: JoinHandle<()>,
}

impl Handle {
    /// Told to stop claiming (it may still finish its task).
    fn is_stopping(&self) -> bool {
        self.shutdown.draining.is_cancelled()
    }

    fn current_task(&self) -> Option<Uuid> {
        self.worker.held_tasks().first().copied()
    }
}

/// One internal worker as `GET /api/v1/workers/internal/status` shows it.
pub struct InternalWorker {
    pub id: String,
    pub status: WorkerStatus,
    pub current_task: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("internal workers are already running ({0}); stop them first or scale")]
    AlreadyRunning(usize),
}

pub struct Supervisor {
    env: WorkerEnv,
    /// Held by start, scale and stop for their whole length: a start or scale during a stop waits until the
    /// stopped workers are gone, so that two workers with one id (and one kind cluster) never run at once.
    lifecycle: tokio::sync::Mutex<()>,
    workers: Mutex<BTreeMap<u32, Handle>>,
    /// How many workers `start` starts: the configured number, then the last scale.
    target: Mutex<usize>,
}

impl Supervisor {
    pub fn new(env: WorkerEnv, num_workers: usize) -> Self {
        Supervisor {
            env,
            lifecycle: tokio::sync::Mutex::new(()),
            workers: Mutex::new(BTreeMap::new()),
            target: Mutex::new(num_workers),
        }
    }

    fn active_count(map: &BTreeMap<u32, Handle>) -> usize {
        map.values().filter(|h| !h.is_stopping()).count()
    }

    /// Forgets workers whose loop has ended.
    fn prune(map: &mut BTreeMap<u32, Handle>) {
        map.retain(|_, h| !h.join.is_finished());
    }

    /// The id of internal worker number `index`.
    pub fn worker_id(prefix: &str, index: u32) -> String {
        format!("{prefix}-{index:03}-kind")
    }

    fn spawn_worker(&self, map: &mut BTreeMap<u32, Handle>) {
        let index = (1..).find(|i| !map.contains_key(i)).expect("a free index");
        let id = Self::worker_id(&self.env.prefix, index);
        let cluster = self
            .env
            .clusters
            .get(index as usize - 1)
            .cloned()
            .unwrap_or_else(|| format!("{}-{index:03}", self.env.prefix));
        let settings = Settings {
            registration: RegisterWorkerRequest {
                worker_id: WorkerId::parse(id.clone()).expect("internal worker ids are valid"),
                backend_type: "kind".into(),
                capabilities: WorkerCapabilities {
                    max_parallel_tasks: 1,
                    supported_problems: Vec::new(),
                },
                metadata: Some(json!({
                    "internal": true,
                    "cluster": cluster,
                    "runner": format!("{:?}", self.env.runner.runner).to_lowercase(),
                })),
                instance_id: InstanceId::parse(self.env.instance_id.clone()).ok(),
            },
            clusters: vec![cluster],
            runner: self.env.runner.clone(),
            heartbeat_interval: self.env.heartbeat_interval,
            claim_wait: CLAIM_WAIT,
            spool: None,
        };
        let queue = LocalQueue {
            dispatcher: self.env.dispatcher.clone(),
            worker_id: id.clone(),
        };
        let shutdown = Shutdown::default();
        let worker = Worker::new(queue, settings, shutdown.clone(), Arc::new(Unobserved));
        let join = tokio::spawn({
            let (worker, id) = (worker.clone(), id.clone());
            async move {
                tracing::info!(worker_id = %id, "internal worker started");
                match worker.run().await {
                    Ok(()) => tracing::info!(worker_id = %id, "internal worker stopped"),
                    Err(e) => {
                        tracing::error!(worker_id = %id, error = %e, "internal worker could not register")
                    }
                }
            }
        });
        map.insert(
            index,
            Handle {
                id,
                worker,
                shutdown,
                join,
            },
        );
    }

    /// Starts the configured number of workers (or the last scale's). 409 when some are running.
    pub async fn start(&self) -> Result<usize, SupervisorError> {
        let _lifecycle = self.lifecycle.lock().await;
        let mut map = self.workers.lock().expect("supervisor lock");
        Self::prune(&mut map);
        let active = Self::active_count(&map);
        if active > 0 {
            return Err(SupervisorError::AlreadyRunning(active));
        }
        let n = *self.target.lock().expect("target lock");
        for _ in 0..n {
            self.spawn_worker(&mut map);
        }
        tracing::info!(workers = n, runner = ?self.env.runner.runner, "internal workers started");
        Ok(n)
    }

    /// Sets the number of active workers: new ones start at once; idle ones stop at once; busy ones finish
    /// their task first (`stopping` meanwhile). Returns the previous count.
    pub async fn scale(&self, n: usize) -> usize {
        let _lifecycle = self.lifecycle.lock().await;
        let (previous, stopping_busy) = {
            let mut map = self.workers.lock().expect("supervisor lock");
            Self::prune(&mut map);
            let previous = Self::active_count(&map);
            *self.target.lock().expect("target lock") = n;
            for _ in previous..n {
                self.spawn_worker(&mut map);
            }
            let mut stopping_busy = Vec::new();
            if n < previous {
                // Idle first, then the busy ones with the highest index.
                let mut victims: Vec<(bool, u32)> = map
                    .iter()
                    .filter(|(_, h)| !h.is_stopping())
                    .map(|(i, h)| (h.current_task().is_some(), *i))
                    .collect();
                victims.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
                for (busy, i) in victims.into_iter().take(previous - n) {
                    let h = &map[&i];
                    h.shutdown.draining.cancel();
                    if busy {
                        stopping_busy.push(h.id.clone());
                    }
                }
            }
            (previous, stopping_busy)
        };
        self.mark_stopping(stopping_busy).await;
        tracing::info!(previous, new = n, "internal workers scaled");
        previous
    }

    /// Shows workers that finish their task before going as `stopping` at once, before their next heartbeat
    /// says so.
    async fn mark_stopping(&self, ids: Vec<String>) {
        for id in ids {
            if let Err(e) = workers::set_stopping(&self.env.dispatcher.db, &id).await {
                tracing::warn!(worker_id = %id, error = %e, "could not mark the worker stopping");
            }
        }
    }

    /// Stops every worker. Without `drain`, running tasks are stopped and given back to the queue (no attempt
    /// used) and this returns when all workers are gone; with `drain`, they finish their tasks first.
    pub async fn stop(&self, drain: bool) -> usize {
        let _lifecycle = self.lifecycle.lock().await;
        let (count, busy, handles) = {
            let mut map = self.workers.lock().expect("supervisor lock");
            Self::prune(&mut map);
            let count = Self::active_count(&map);
            for h in map.values() {
                h.shutdown.draining.cancel();
                if !drain {
                    h.shutdown.forced.cancel();
                }
            }
            let busy: Vec<String> = map
                .values()
                .filter(|h| h.current_task().is_some())
                .map(|h| h.id.clone())
                .collect();
            // Draining workers stay listed (as `stopping`) until they finish; stopped ones are awaited here.
            let handles: Vec<(String, JoinHandle<()>)> = if drain {
                Vec::new()
            } else {
                std::mem::take(&mut *map)
                    .into_values()
                    .map(|h| (h.id, h.join))
                    .collect()
            };
            (count, busy, handles)
        };
        if drain {
            self.mark_stopping(busy).await;
            tracing::info!(workers = count, "internal workers draining");
            return count;
        }
        for (id, join) in handles {
            if let Err(e) = join.await {
                tracing::error!(worker_id = %id, error = %e, "internal worker ended abnormally");
            }
        }
        tracing::info!(workers = count, "internal workers stopped");
        count
    }

    pub fn status(&self) -> (bool, Vec<InternalWorker>) {
        let mut map = self.workers.lock().expect("supervisor lock");
        Self::prune(&mut map);
        let workers: Vec<InternalWorker> = map
            .values()
            .map(|h| {
                let current_task = h.current_task();
                let status = if h.is_stopping() {
                    WorkerStatus::Stopping
                } else if current_task.is_some() {
                    WorkerStatus::Busy
                } else {
                    WorkerStatus::Idle
                };
                InternalWorker {
                    id: h.id.clone(),
                    status,
                    current_task,
                }
            })
            .collect();
        (Self::active_count(&map) > 0, workers)
    }
}
