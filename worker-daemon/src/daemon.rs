//! The daemon: registration, a heartbeat loop, one claim loop per slot, and delivery of every run's logs and
//! outcome — in order, retried until the server has them, so no outcome is dropped for a network error.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::json;
use task_executor_shared::{
    WorkerId, WorkerStatus,
    api::{self, HeartbeatRequest, NewLogEntry, RegisterWorkerRequest, Task, WorkerCapabilities},
    runner::{self, RunControl, RunOutcome, TaskSpec},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    client::{Client, ClientError, backoff, retry},
    config::Config,
    metrics::DaemonMetrics,
};

/// After a forced stop, how long undelivered reports are still tried.
const FORCED_DELIVERY_WINDOW: Duration = Duration::from_secs(30);

/// What ends the daemon: `draining` stops claims; `forced` stops runs (they are released to the server).
#[derive(Clone, Default)]
pub struct Shutdown {
    pub draining: CancellationToken,
    pub forced: CancellationToken,
}

struct Held {
    cancel: CancellationToken,
}

pub struct Daemon {
    cfg: Config,
    client: Client,
    worker_id: String,
    /// Tasks this worker holds: running, or finished with the outcome not yet delivered.
    held: Mutex<HashMap<Uuid, Held>>,
    shutdown: Shutdown,
    /// Fires `FORCED_DELIVERY_WINDOW` after a forced stop: delivery gives up then.
    give_up: CancellationToken,
    metrics: Arc<DaemonMetrics>,
}

impl Daemon {
    pub fn new(
        cfg: Config,
        shutdown: Shutdown,
        metrics: Arc<DaemonMetrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let worker_id = cfg.worker_id();
        WorkerId::parse(worker_id.clone())
            .map_err(|e| anyhow::anyhow!("invalid worker id `{worker_id}`: {e}"))?;
        let client = Client::new(
            &cfg.server(),
            &worker_id,
            Duration::from_secs(cfg.request_timeout_seconds),
        )?;
        Ok(Arc::new(Daemon {
            cfg,
            client,
            worker_id,
            held: Mutex::new(HashMap::new()),
            shutdown,
            give_up: CancellationToken::new(),
            metrics,
        }))
    }

    fn registration(&self) -> RegisterWorkerRequest {
        RegisterWorkerRequest {
            worker_id: WorkerId::parse(self.worker_id.clone()).expect("checked in new"),
            backend_type: self.cfg.backend_type.clone(),
            capabilities: WorkerCapabilities {
                max_parallel_tasks: i32::from(self.cfg.max_parallel_tasks),
                supported_problems: self.cfg.supported_problems.clone(),
            },
            metadata: Some(json!({
                "hostname": nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()),
                "version": env!("CARGO_PKG_VERSION"),
                "runner": format!("{:?}", self.cfg.runner.runner).to_lowercase(),
                "clusters": self.cfg.clusters(),
                "pid": std::process::id(),
            })),
        }
    }

    async fn register(&self) -> Result<(), ClientError> {
        let req = self.registration();
        retry(
            "registration",
            &self.shutdown.draining,
            &self.metrics.report_retries,
            || self.client.register(&req),
        )
        .await
    }

    /// Runs until shut down; returns when every slot has stopped and the server knows.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        if let Err(e) = self.register().await {
            if self.shutdown.draining.is_cancelled() {
                return Ok(());
            }
            anyhow::bail!("cannot register with {}: {e}", self.cfg.server());
        }
        tracing::info!(worker_id = %self.worker_id, server = %self.cfg.server(), slots = self.cfg.max_parallel_tasks, "registered");
        // Under systemd (Type=notify): ready once registered. A no-op elsewhere.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let beat_stop = CancellationToken::new();
        let beat = tokio::spawn(self.clone().heartbeat_loop(beat_stop.clone()));
        let forced = self.shutdown.forced.clone();
        let give_up = self.give_up.clone();
        tokio::spawn(async move {
            forced.cancelled().await;
            tokio::time::sleep(FORCED_DELIVERY_WINDOW).await;
            give_up.cancel();
        });
        let slots: Vec<_> = self
            .cfg
            .clusters()
            .into_iter()
            .map(|cluster| tokio::spawn(self.clone().slot_loop(cluster)))
            .collect();
        for s in slots {
            let _ = s.await;
        }
        beat_stop.cancel();
        let _ = beat.await;
        let offline = HeartbeatRequest {
            status: WorkerStatus::Offline,
            current_task_id: None,
            running_task_ids: Vec::new(),
        };
        match self.client.heartbeat(&offline).await {
            Ok(_) => tracing::info!("told the server this worker is going offline"),
            Err(e) => {
                tracing::warn!(error = %e, "could not tell the server this worker is going offline")
            }
        }
        Ok(())
    }

    async fn heartbeat_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ids: Vec<Uuid> = self
                .held
                .lock()
                .expect("held lock")
                .keys()
                .copied()
                .collect();
            let req = HeartbeatRequest {
                status: if ids.is_empty() {
                    WorkerStatus::Idle
                } else {
                    WorkerStatus::Busy
                },
                current_task_id: ids.first().copied(),
                running_task_ids: ids,
            };
            match self.client.heartbeat(&req).await {
                Ok(resp) => {
                    let held = self.held.lock().expect("held lock");
                    for id in resp.cancel_task_ids {
                        if let Some(h) = held.get(&id)
                            && !h.cancel.is_cancelled()
                        {
                            tracing::info!(task_id = %id, "the server says stop: cancelling the run");
                            h.cancel.cancel();
                        }
                    }
                }
                Err(e) if e.is_status(StatusCode::NOT_FOUND) => {
                    tracing::warn!("the server does not know this worker: registering again");
                    let _ = self.client.register(&self.registration()).await;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }

    async fn slot_loop(self: Arc<Self>, cluster: String) {
        let wait = Duration::from_secs(self.cfg.claim_wait_seconds);
        let mut failures = 0;
        loop {
            let claimed = tokio::select! {
                _ = self.shutdown.draining.cancelled() => return,
                r = self.client.claim(wait) => r,
            };
            match claimed {
                Ok(Some(task)) => {
                    failures = 0;
                    self.run_task(task, &cluster).await;
                }
                Ok(None) => failures = 0,
                Err(e) => {
                    if e.is_status(StatusCode::NOT_FOUND) {
                        tracing::warn!("the server does not know this worker: registering again");
                        let _ = self.register().await;
                    } else if e.is_status(StatusCode::CONFLICT) {
                        tracing::debug!(error = %e, "at capacity on the server");
                    } else {
                        tracing::warn!(error = %e, "claim failed");
                    }
                    tokio::select! {
                        _ = self.shutdown.draining.cancelled() => return,
                        _ = tokio::time::sleep(backoff(failures)) => {}
                    }
                    failures += 1;
                }
            }
        }
    }

    #[tracing::instrument(skip_all, fields(task_id = %task.id, attempt = task.attempt, cluster = %cluster))]
    async fn run_task(&self, task: Task, cluster: &str) {
        let spec = TaskSpec {
            task_id: task.id,
            problem_id: task.problem_id.to_string(),
            attempt: task.attempt,
            worker_id: self.worker_id.clone(),
            cluster: cluster.to_owned(),
            parameters: serde_json::Value::Object(task.parameters.clone().into_iter().collect()),
        };
        let deadline = spec.deadline(task.started_at);
        let control = RunControl {
            cancel: CancellationToken::new(),
            interrupt: self.shutdown.forced.child_token(),
        };
        self.held.lock().expect("held lock").insert(
            task.id,
            Held {
                cancel: control.cancel.clone(),
            },
        );
        tracing::info!(problem_id = %task.problem_id, "running task");

        let (tx, rx) = mpsc::unbounded_channel();
        self.metrics.running.add(1, &[]);
        let shipper = tokio::spawn(ship_logs(
            self.metrics.clone(),
            self.client.clone(),
            task.id,
            task.attempt,
            rx,
            control.cancel.clone(),
            self.give_up.clone(),
        ));
        let outcome = runner::execute(&self.cfg.runner, &spec, deadline, &control, &tx).await;
        drop(tx);
        self.metrics.running.add(-1, &[]);
        let _ = shipper.await;
        self.metrics.backlog.add(1, &[]);
        self.deliver(&task, outcome).await;
        self.metrics.backlog.add(-1, &[]);
        self.held.lock().expect("held lock").remove(&task.id);
    }

    /// Reports the outcome until the server has it (or refuses it for good).
    async fn deliver(&self, task: &Task, outcome: RunOutcome) {
        let (id, attempt) = (task.id, task.attempt);
        let retries = &self.metrics.report_retries;
        self.metrics.run_ended(match &outcome {
            RunOutcome::Completed { .. } => "completed",
            RunOutcome::Failed { .. } => "failed",
            RunOutcome::TimedOut { .. } => "timeout",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Interrupted => "released",
        });
        let r = match outcome {
            RunOutcome::Completed { result } => {
                let body = api::CompleteTaskRequest {
                    attempt,
                    result: result.into_iter().collect(),
                };
                retry("reporting completion", &self.give_up, retries, || {
                    self.client.complete(id, &body)
                })
                .await
            }
            RunOutcome::Failed { error, result } => {
                let body = api::FailTaskRequest {
                    attempt,
                    error,
                    status: None,
                    result: result.map(|r| r.into_iter().collect()),
                };
                retry("reporting failure", &self.give_up, retries, || {
                    self.client.fail(id, &body)
                })
                .await
            }
            RunOutcome::TimedOut { error } => {
                let body = api::FailTaskRequest {
                    attempt,
                    error,
                    status: Some(api::FailStatus::Timeout),
                    result: None,
                };
                retry("reporting the timeout", &self.give_up, retries, || {
                    self.client.fail(id, &body)
                })
                .await
            }
            RunOutcome::Cancelled => {
                tracing::info!("run stopped: the task was cancelled or is no longer this worker's");
                return;
            }
            RunOutcome::Interrupted => {
                retry("releasing the task", &self.give_up, retries, || {
                    self.client.release(id, attempt)
                })
                .await
            }
        };
        match r {
            Ok(t) => tracing::info!(status = %t.status, "outcome delivered"),
            Err(e @ ClientError::Status { .. }) => {
                tracing::info!(error = %e, "outcome refused by the server")
            }
            Err(e) => {
                tracing::error!(error = %e, "outcome not delivered: the server was unreachable too long")
            }
        }
    }
}

/// Sends a run's log entries in order, in batches, retrying until the server has each batch. A refusal (the
/// task is no longer this worker's) stops the run.
async fn ship_logs(
    metrics: Arc<DaemonMetrics>,
    client: Client,
    task: Uuid,
    attempt: i32,
    mut rx: mpsc::UnboundedReceiver<NewLogEntry>,
    cancel: CancellationToken,
    give_up: CancellationToken,
) {
    let mut refused = false;
    while let Some(batch) = runner::next_log_batch(&mut rx).await {
        if refused {
            continue;
        }
        metrics.backlog.add(1, &[]);
        let sent = retry(
            "sending task logs",
            &give_up,
            &metrics.report_retries,
            || client.logs(task, attempt, &batch),
        )
        .await;
        metrics.backlog.add(-1, &[]);
        match sent {
            Ok(()) => {}
            Err(e @ ClientError::Status { .. }) => {
                tracing::info!(task_id = %task, error = %e, "logs refused: stopping the run");
                refused = true;
                cancel.cancel();
            }
            Err(e) => tracing::warn!(task_id = %task, error = %e, "task logs dropped"),
        }
    }
}
