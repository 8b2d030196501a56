//! Internal workers: workers inside the API server process. Each is registered in the workers table like any
//! worker, heartbeats, claims through the same queue functions as the HTTP claim, and runs tasks with the
//! shared execution engine. The supervisor starts, scales and stops them without losing work.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sea_orm::DatabaseConnection;
use serde_json::json;
use task_executor_shared::{
    WorkerStatus,
    api::{self, HeartbeatRequest, NewLogEntry, RegisterWorkerRequest, WorkerCapabilities},
    runner::{self, RunControl, RunOutcome, RunnerArgs, TaskSpec},
};
use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::{
    StoreError,
    entity::task,
    queue::{self, LeasePolicy, Outcome},
    workers,
};

/// How long a worker waits for a task before looking again (tasks made by other replicas wake no one here).
const POLL_TICK: Duration = Duration::from_millis(500);
/// How long an outcome report is retried while the database does not answer.
const REPORT_RETRY_FOR: Duration = Duration::from_secs(120);

/// What the supervisor needs from the server.
#[derive(Clone)]
pub struct WorkerEnv {
    pub db: DatabaseConnection,
    pub lease: LeasePolicy,
    pub queue_changed: Arc<Notify>,
    pub runner: RunnerArgs,
    pub prefix: String,
    pub clusters: Vec<String>,
    pub heartbeat_interval: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Default)]
struct Live {
    /// The task being run and the token that cancels it.
    current: Option<(Uuid, CancellationToken)>,
    stopping: bool,
}

struct Handle {
    id: String,
    /// Stop claiming; finish the current task first.
    graceful: CancellationToken,
    /// Stop the current task now and give it back to the queue.
    interrupt: CancellationToken,
    live: Arc<Mutex<Live>>,
    join: JoinHandle<()>,
}

impl Handle {
    fn is_stopping(&self) -> bool {
        self.graceful.is_cancelled()
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
    workers: Mutex<BTreeMap<u32, Handle>>,
    /// How many workers `start` starts: the configured number, then the last scale.
    target: Mutex<usize>,
}

impl Supervisor {
    pub fn new(env: WorkerEnv, num_workers: usize) -> Self {
        Supervisor {
            env,
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

    fn spawn_worker(&self, map: &mut BTreeMap<u32, Handle>) {
        let index = (1..).find(|i| !map.contains_key(i)).expect("a free index");
        let id = format!("{}-{index:03}-kind", self.env.prefix);
        let cluster = self
            .env
            .clusters
            .get(index as usize - 1)
            .cloned()
            .unwrap_or_else(|| format!("{}-{index:03}", self.env.prefix));
        let graceful = CancellationToken::new();
        let interrupt = CancellationToken::new();
        let live = Arc::new(Mutex::new(Live::default()));
        let join = tokio::spawn(worker_main(
            self.env.clone(),
            id.clone(),
            cluster,
            graceful.clone(),
            interrupt.clone(),
            live.clone(),
        ));
        map.insert(
            index,
            Handle {
                id,
                graceful,
                interrupt,
                live,
                join,
            },
        );
    }

    /// Starts the configured number of workers (or the last scale's). 409 when some are running.
    pub fn start(&self) -> Result<usize, SupervisorError> {
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
                    .map(|(i, h)| (h.live.lock().expect("live lock").current.is_some(), *i))
                    .collect();
                victims.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
                for (busy, i) in victims.into_iter().take(previous - n) {
                    let h = &map[&i];
                    h.live.lock().expect("live lock").stopping = true;
                    h.graceful.cancel();
                    if busy {
                        stopping_busy.push(h.id.clone());
                    }
                }
            }
            (previous, stopping_busy)
        };
        for id in stopping_busy {
            if let Err(e) = workers::set_stopping(&self.env.db, &id).await {
                tracing::warn!(worker_id = %id, error = %e, "could not mark the worker stopping");
            }
        }
        tracing::info!(previous, new = n, "internal workers scaled");
        previous
    }

    /// Stops every worker. Without `drain`, running tasks are stopped and given back to the queue (no attempt
    /// used) and this returns when all workers are gone; with `drain`, they finish their tasks first.
    pub async fn stop(&self, drain: bool) -> usize {
        let (count, busy, handles) = {
            let mut map = self.workers.lock().expect("supervisor lock");
            Self::prune(&mut map);
            let count = Self::active_count(&map);
            for h in map.values() {
                h.live.lock().expect("live lock").stopping = true;
                h.graceful.cancel();
                if !drain {
                    h.interrupt.cancel();
                }
            }
            let busy: Vec<String> = map
                .values()
                .filter(|h| h.live.lock().expect("live lock").current.is_some())
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
            for id in busy {
                let _ = workers::set_stopping(&self.env.db, &id).await;
            }
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
                let live = h.live.lock().expect("live lock");
                let current_task = live.current.as_ref().map(|(id, _)| *id);
                let status = if live.stopping || h.is_stopping() {
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

/// Retries `f` with backoff while the database fails, for up to `for_how_long`. Conflicts and not-found are
/// answers, not failures, and are returned at once.
async fn with_retry<T, F, Fut>(
    what: &str,
    for_how_long: Duration,
    mut f: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Err(StoreError::Db(e)) if start.elapsed() < for_how_long => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

async fn worker_main(
    env: WorkerEnv,
    id: String,
    cluster: String,
    graceful: CancellationToken,
    interrupt: CancellationToken,
    live: Arc<Mutex<Live>>,
) {
    let req = RegisterWorkerRequest {
        worker_id: task_executor_shared::WorkerId::parse(id.clone())
            .expect("internal worker ids are valid"),
        backend_type: "kind".to_owned(),
        capabilities: WorkerCapabilities {
            max_parallel_tasks: 1,
            supported_problems: Vec::new(),
        },
        metadata: Some(
            json!({"internal": true, "cluster": cluster, "runner": format!("{:?}", env.runner.runner).to_lowercase()}),
        ),
    };
    loop {
        match workers::register(&env.db, &req, env.lease.max_attempts).await {
            Ok(_) => break,
            Err(e) => {
                tracing::error!(worker_id = %id, error = %e, "internal worker cannot register; retrying");
                tokio::select! {
                    _ = graceful.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
    tracing::info!(worker_id = %id, cluster = %cluster, "internal worker started");
    let beat_stop = CancellationToken::new();
    let beat = tokio::spawn(heartbeat_loop(
        env.clone(),
        id.clone(),
        live.clone(),
        beat_stop.clone(),
    ));

    while !graceful.is_cancelled() {
        let notified = env.queue_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match queue::claim(&env.db, &id, &env.lease).await {
            Ok(Some(t)) => {
                env.metrics.task_claimed(&t);
                run_task(&env, &id, &cluster, t, &interrupt, &live).await
            }
            Ok(None) => {
                tokio::select! {
                    _ = graceful.cancelled() => {}
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(POLL_TICK) => {}
                }
            }
            Err(e) => {
                tracing::error!(worker_id = %id, error = %e, "claim failed");
                tokio::select! {
                    _ = graceful.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    beat_stop.cancel();
    let _ = beat.await;
    let offline = HeartbeatRequest {
        status: WorkerStatus::Offline,
        current_task_id: None,
        running_task_ids: Vec::new(),
    };
    if let Err(e) = queue::heartbeat(&env.db, &id, &offline, &env.lease).await {
        tracing::warn!(worker_id = %id, error = %e, "could not mark the worker offline");
    }
    tracing::info!(worker_id = %id, "internal worker stopped");
}

async fn heartbeat_loop(
    env: WorkerEnv,
    id: String,
    live: Arc<Mutex<Live>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(env.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let current = live.lock().expect("live lock").current.clone();
        let req = HeartbeatRequest {
            status: if current.is_some() {
                WorkerStatus::Busy
            } else {
                WorkerStatus::Idle
            },
            current_task_id: current.as_ref().map(|(t, _)| *t),
            running_task_ids: Vec::new(),
        };
        match queue::heartbeat(&env.db, &id, &req, &env.lease).await {
            Ok(out) => {
                env.metrics.released(&out.released, "claim_lost");
                if let Some((task_id, cancel)) = current
                    && out.cancel_task_ids.contains(&task_id)
                {
                    tracing::info!(worker_id = %id, task_id = %task_id, "the server says stop: cancelling the run");
                    cancel.cancel();
                }
            }
            Err(e) => tracing::warn!(worker_id = %id, error = %e, "heartbeat failed"),
        }
    }
}

#[tracing::instrument(skip_all, fields(worker_id = %id, task_id = %t.id, attempt = t.attempt))]
async fn run_task(
    env: &WorkerEnv,
    id: &str,
    cluster: &str,
    t: task::Model,
    interrupt: &CancellationToken,
    live: &Arc<Mutex<Live>>,
) {
    let spec = TaskSpec {
        task_id: t.id,
        problem_id: t.problem_id.clone(),
        attempt: t.attempt,
        worker_id: id.to_owned(),
        cluster: cluster.to_owned(),
        parameters: t.parameters.clone(),
    };
    let deadline = spec.deadline(t.started_at);
    let control = RunControl {
        cancel: CancellationToken::new(),
        interrupt: interrupt.child_token(),
    };
    live.lock().expect("live lock").current = Some((t.id, control.cancel.clone()));
    tracing::info!(problem_id = %t.problem_id, "running task");

    let (tx, rx) = mpsc::unbounded_channel();
    let shipper = tokio::spawn(ship_logs(
        env.db.clone(),
        id.to_owned(),
        t.id,
        t.attempt,
        rx,
        control.cancel.clone(),
    ));
    let outcome = runner::execute(&env.runner, &spec, deadline, &control, &tx).await;
    drop(tx);
    let _ = shipper.await;

    let report = match outcome {
        RunOutcome::Completed { result } => Some(Outcome::Completed(result.into_iter().collect())),
        RunOutcome::Failed { error, result } => Some(Outcome::Failed {
            status: task_executor_shared::TaskStatus::Failed,
            error,
            result: result.map(|r| r.into_iter().collect()),
        }),
        RunOutcome::TimedOut { error } => Some(Outcome::Failed {
            status: task_executor_shared::TaskStatus::Timeout,
            error,
            result: None,
        }),
        RunOutcome::Cancelled => {
            tracing::info!("run stopped: the task was cancelled or is no longer this worker's");
            None
        }
        RunOutcome::Interrupted => {
            let r = with_retry("giving the task back", REPORT_RETRY_FOR, || {
                queue::give_back(&env.db, id, t.id, t.attempt)
            })
            .await;
            match r {
                Ok(_) => {
                    tracing::info!("run interrupted: task given back to the queue");
                    env.metrics.tasks_requeued(1, "worker_stopping");
                    env.queue_changed.notify_waiters();
                }
                Err(e) => tracing::warn!(error = %e, "could not give the task back"),
            }
            None
        }
    };
    if let Some(outcome) = report {
        let r = with_retry("reporting the outcome", REPORT_RETRY_FOR, || {
            queue::finish(&env.db, id, t.id, t.attempt, outcome.clone())
        })
        .await;
        match r {
            Ok(done) => {
                tracing::info!(status = %done.status, "task finished");
                env.metrics.task_finished(&done);
            }
            Err(StoreError::Conflict { kind, detail }) => {
                tracing::info!(kind, "outcome not recorded: {detail}")
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record the outcome; the reaper will recover the task")
            }
        }
    }
    live.lock().expect("live lock").current = None;
}

/// Writes the run's log entries in batches as they come; stops the run when the server refuses them (the
/// task is no longer this worker's).
async fn ship_logs(
    db: DatabaseConnection,
    worker_id: String,
    task_id: Uuid,
    attempt: i32,
    mut rx: mpsc::UnboundedReceiver<NewLogEntry>,
    cancel: CancellationToken,
) {
    let mut refused = false;
    while let Some(batch) = runner::next_log_batch(&mut rx).await {
        if refused {
            continue;
        }
        let req = api::ReportLogsRequest {
            attempt,
            entries: batch,
        };
        let r = with_retry("writing task logs", Duration::from_secs(30), || {
            queue::report_logs(&db, &worker_id, task_id, req.clone())
        })
        .await;
        match r {
            Ok(_) => {}
            Err(StoreError::Conflict { kind, .. }) => {
                tracing::info!(task_id = %task_id, kind, "logs refused: stopping the run");
                refused = true;
                cancel.cancel();
            }
            Err(e) => tracing::warn!(task_id = %task_id, error = %e, "task logs dropped"),
        }
    }
}
