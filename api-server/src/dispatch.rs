//! The server side of the worker protocol — registration, heartbeats, claims, reports, releases and recovery
//! — in one place for the HTTP handlers and the internal workers alike: each call goes to the store, records
//! the metrics and wakes the claims waiting in this process, so both kinds of worker are served the same.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sea_orm::DatabaseConnection;
use task_executor_shared::api;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    metrics::Metrics,
    store::{
        StoreError, StoreResult,
        entity::task,
        queue::{self, Claim, HeartbeatOutcome, LeasePolicy, Outcome, ReapReport, RunRef},
        workers::{self, Registered},
    },
};

/// How often a waiting claim looks at the queue even when nothing in this process woke it (tasks created by
/// another replica, or released by another replica's reaper).
const POLL_TICK: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Dispatcher {
    pub db: DatabaseConnection,
    pub lease: LeasePolicy,
    pub metrics: Arc<Metrics>,
    /// Woken when a task becomes claimable in this process (created or given back), so that waiting claims
    /// look at once.
    queue_changed: Arc<Notify>,
    /// Claims waiting in this process, per worker, and how many may wait at once in all.
    waiting: Arc<Mutex<HashMap<String, usize>>>,
    max_waiting: usize,
}

/// One waiting claim, counted while it lives (a claim whose client went away is dropped, and uncounted).
struct Waiting {
    waiting: Arc<Mutex<HashMap<String, usize>>>,
    worker_id: String,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut w = self.waiting.lock().expect("waiting lock");
        if let Some(n) = w.get_mut(&self.worker_id) {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.worker_id);
            }
        }
    }
}

/// How long a client refused for too many waiting claims is told to wait.
const RETRY_WAITING_SECONDS: u64 = 5;

impl Dispatcher {
    pub fn new(
        db: DatabaseConnection,
        lease: LeasePolicy,
        metrics: Arc<Metrics>,
        max_waiting: usize,
    ) -> Self {
        Dispatcher {
            db,
            lease,
            metrics,
            queue_changed: Arc::new(Notify::new()),
            waiting: Arc::default(),
            max_waiting,
        }
    }

    /// Counts a claim that is about to wait: at most the worker's free slots per worker (more could not be
    /// served), and `max_waiting` in all; beyond, 429 with `Retry-After`.
    fn start_waiting(&self, worker_id: &str, free_slots: i64) -> StoreResult<Waiting> {
        let mut w = self.waiting.lock().expect("waiting lock");
        let total: usize = w.values().sum();
        let mine = w.get(worker_id).copied().unwrap_or(0);
        if total >= self.max_waiting {
            return Err(StoreError::TooMany {
                kind: "too_many_waiting_claims",
                detail: format!(
                    "{total} claims are waiting on this server already (MAX_WAITING_CLAIMS); try again later"
                ),
                retry_after: RETRY_WAITING_SECONDS,
            });
        }
        if mine as i64 >= free_slots.max(1) {
            return Err(StoreError::TooMany {
                kind: "too_many_waiting_claims",
                detail: format!(
                    "worker {worker_id} already has {mine} claim(s) waiting for its {} free slot(s)",
                    free_slots.max(0)
                ),
                retry_after: RETRY_WAITING_SECONDS,
            });
        }
        *w.entry(worker_id.to_owned()).or_default() += 1;
        Ok(Waiting {
            waiting: self.waiting.clone(),
            worker_id: worker_id.to_owned(),
        })
    }

    /// A task became claimable: wake the claims waiting in this process.
    pub fn wake(&self) {
        self.queue_changed.notify_waiters();
    }

    fn released(&self, tasks: &[task::Model], reason: &'static str) {
        self.metrics.released(tasks, reason);
        if !tasks.is_empty() {
            self.wake();
        }
    }

    /// Registers a worker, or a known one again (the tasks it still held are released).
    pub async fn register(&self, req: &api::RegisterWorkerRequest) -> StoreResult<Registered> {
        let r = workers::register(&self.db, req, &self.lease).await?;
        self.released(&r.released, "worker_reregistered");
        tracing::info!(worker_id = %r.worker.id, created = r.created, released = r.released.len(), "worker registered");
        Ok(r)
    }

    pub async fn heartbeat(
        &self,
        worker_id: &str,
        req: &api::HeartbeatRequest,
    ) -> StoreResult<HeartbeatOutcome> {
        let out = queue::heartbeat(&self.db, worker_id, req, &self.lease).await?;
        self.released(&out.released, "claim_lost");
        Ok(out)
    }

    /// The next task for the worker, waiting up to `wait` for one; `None` when none came, or when `stop`
    /// fired (checked between looks, never in the middle of one).
    pub async fn claim(
        &self,
        worker_id: &str,
        wait: Duration,
        stop: &CancellationToken,
    ) -> StoreResult<Option<task::Model>> {
        let deadline = Instant::now() + wait;
        let mut waiting = None;
        loop {
            // Subscribe before looking, so that a task created meanwhile cannot be missed.
            let notified = self.queue_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let free_slots = match queue::claim(&self.db, worker_id, &self.lease).await? {
                Claim::Task(t) => {
                    tracing::info!(task_id = %t.id, worker_id = %worker_id, attempt = t.attempt, "task claimed");
                    self.metrics.task_claimed(&t);
                    return Ok(Some(*t));
                }
                Claim::Empty { free_slots } => free_slots,
            };
            let now = Instant::now();
            if now >= deadline || stop.is_cancelled() {
                return Ok(None);
            }
            if waiting.is_none() {
                waiting = Some(self.start_waiting(worker_id, free_slots)?);
            }
            tokio::select! {
                _ = tokio::time::timeout((deadline - now).min(POLL_TICK), notified) => {}
                _ = stop.cancelled() => return Ok(None),
            }
        }
    }

    pub async fn report_logs(
        &self,
        worker_id: &str,
        task_id: Uuid,
        req: api::ReportLogsRequest,
    ) -> StoreResult<u64> {
        queue::report_logs(&self.db, worker_id, task_id, req, &self.lease).await
    }

    /// Records the outcome of a run.
    pub async fn finish(
        &self,
        task_id: Uuid,
        run: RunRef<'_>,
        outcome: Outcome,
    ) -> StoreResult<task::Model> {
        let worker_id = run.worker_id;
        let t = queue::finish(&self.db, task_id, run, outcome).await?;
        tracing::info!(task_id = %t.id, worker_id = %worker_id, status = %t.status, "task finished");
        self.metrics.task_finished(&t);
        Ok(t)
    }

    /// A run its worker stopped goes back to the queue, attempt not counted.
    pub async fn release(
        &self,
        task_id: Uuid,
        run: RunRef<'_>,
        why: Option<&str>,
    ) -> StoreResult<task::Model> {
        let worker_id = run.worker_id;
        let t = queue::give_back(&self.db, task_id, run, &self.lease, why).await?;
        tracing::info!(task_id = %t.id, worker_id = %worker_id, "task released by its worker");
        self.metrics.tasks_requeued(1, "worker_stopping");
        self.wake();
        Ok(t)
    }

    /// One pass of recovery (see [`queue::reap`]).
    pub async fn reap(&self, leases: bool) -> StoreResult<ReapReport> {
        let r = queue::reap(&self.db, &self.lease, leases).await?;
        self.released(&r.released, "lease_expired");
        for t in &r.timed_out {
            self.metrics.task_finished(t);
        }
        Ok(r)
    }
}
