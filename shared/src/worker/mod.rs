//! The worker, written once for both kinds: the API server's internal workers and the worker daemon.
//!
//! A [`Worker`] registers (retrying until the queue answers), heartbeats with every task it holds, runs one
//! claim loop per slot (each slot drives its own kind cluster), runs each claimed task with the shared engine
//! while its log entries are shipped in batches, and delivers the outcome — retried until the queue has it,
//! so that no outcome is lost to a network or database hiccup. A task stays listed in heartbeats until its
//! outcome is delivered, so the queue keeps it leased meanwhile. Draining stops the claims and lets runs
//! finish; a forced stop interrupts the runs and gives their tasks back; then the worker says goodbye (an
//! `offline` heartbeat). A queue that forgot the worker gets it registered again.
//!
//! What differs between the two kinds is only how they reach the queue: [`Queue`], over HTTP for the daemon
//! and in-process over the store for internal workers; and what they observe ([`Observer`]).

mod queue;
mod retry;
mod spool;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Map, Value};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

pub use queue::{Queue, QueueError};
pub use retry::{backoff, delays, probe_delays, retry};
pub use spool::{Kept, Report, Spool, Spooled};

use crate::{
    FailedBy, WorkerStatus,
    api::{
        self, ClaimedTask, CompleteTaskRequest, FailTaskRequest, HeartbeatRequest,
        RegisterWorkerRequest, Task,
    },
    limits,
    runner::{self, LogBatches, RunControl, RunOutcome, RunnerArgs, TaskSpec},
};

/// Which run a report is about.
#[derive(Debug, Clone, Copy)]
struct Run {
    task_id: Uuid,
    attempt: i32,
    lease_id: Uuid,
}

/// An outcome as it may be reported: clean text, the error and the result within their limits.
fn fit_outcome(outcome: RunOutcome) -> RunOutcome {
    let fit_error = |mut e: String| {
        limits::clean_text(&mut e);
        limits::fit_head_and_tail(&mut e, limits::MAX_ERROR_CHARS);
        e
    };
    let fit_result = |mut r: Map<String, Value>| {
        limits::fit_result(&mut r);
        r
    };
    match outcome {
        RunOutcome::Completed { result } => RunOutcome::Completed {
            result: fit_result(result),
        },
        RunOutcome::Failed {
            error,
            result,
            kind,
        } => RunOutcome::Failed {
            error: fit_error(error),
            result: result.map(fit_result),
            kind,
        },
        RunOutcome::TimedOut { error, result } => RunOutcome::TimedOut {
            error: fit_error(error),
            result: result.map(fit_result),
        },
        other => other,
    }
}

/// Whether a slot checks its runner again before its next claim.
enum Checked {
    Fine,
    Again,
}

/// After a forced stop, how long undelivered reports are still tried.
pub const FORCED_DELIVERY_WINDOW: Duration = Duration::from_secs(30);

/// What a worker is and how it paces itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sent when registering (and again after the queue forgot the worker).
    pub registration: RegisterWorkerRequest,
    /// The kind cluster of each slot: one claim loop, one run at a time, per entry.
    pub clusters: Vec<String>,
    pub runner: RunnerArgs,
    pub heartbeat_interval: Duration,
    /// How long one claim waits for a task (long poll).
    pub claim_wait: Duration,
    /// Where reports are kept until delivered, so that they survive the worker (the daemon's; internal
    /// workers die with the server they report to and need none).
    pub spool: Option<Spool>,
}

/// What ends a worker: `draining` stops the claims (runs finish); `forced` also stops the runs, whose tasks
/// are released to the queue.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub draining: CancellationToken,
    pub forced: CancellationToken,
}

/// What a worker tells whoever watches it (the daemon's metrics and systemd); every method defaults to
/// nothing.
pub trait Observer: Send + Sync + 'static {
    /// Registered with the queue: the worker is ready.
    fn registered(&self) {}
    /// A run started.
    fn run_started(&self) {}
    /// A run ended: `completed`, `failed`, `timeout`, `cancelled` or `released`.
    fn run_ended(&self, _outcome: &'static str) {}
    /// A request to the queue is being retried.
    fn retried(&self) {}
    /// Reports (log batches, outcomes) waiting for delivery went up or down by `delta`.
    fn backlog(&self, _delta: i64) {}
    /// The worker became degraded (its runner cannot run problems; the reason), or usable again (`None`).
    fn degraded(&self, _reason: Option<&str>) {}
}

/// An observer that watches nothing.
pub struct Unobserved;

impl Observer for Unobserved {}

/// One worker: see the module documentation.
pub struct Worker<Q: Queue> {
    queue: Q,
    settings: Settings,
    /// The runs this worker holds, by lease id, each with its task and the token that cancels it: running,
    /// or finished with the outcome not yet delivered.
    held: Mutex<HashMap<Uuid, (Uuid, CancellationToken)>>,
    shutdown: Shutdown,
    /// Fires [`FORCED_DELIVERY_WINDOW`] after a forced stop: retries give up then.
    give_up: CancellationToken,
    observer: Arc<dyn Observer>,
    /// How long a lease lasts without a heartbeat, as the queue said at registration.
    lease: Mutex<Duration>,
    /// When a heartbeat last renewed this worker's leases.
    renewed: Mutex<Instant>,
    /// The slots (by cluster) whose runner cannot run problems now, and why.
    unusable: Mutex<BTreeMap<String, String>>,
    /// Wakes the heartbeat loop at once (the worker's state changed).
    beat_now: Notify,
}

impl<Q: Queue> Worker<Q> {
    pub fn new(
        queue: Q,
        settings: Settings,
        shutdown: Shutdown,
        observer: Arc<dyn Observer>,
    ) -> Arc<Self> {
        Arc::new(Worker {
            queue,
            settings,
            held: Mutex::new(HashMap::new()),
            shutdown,
            give_up: CancellationToken::new(),
            observer,
            lease: Mutex::new(Duration::from_secs(60)),
            renewed: Mutex::new(Instant::now()),
            unusable: Mutex::new(BTreeMap::new()),
            beat_now: Notify::new(),
        })
    }

    pub fn worker_id(&self) -> &str {
        self.queue.worker_id()
    }

    /// The tasks held now (not their lease ids), in id order.
    pub fn held_tasks(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .held
            .lock()
            .expect("held lock")
            .values()
            .map(|(task, _)| *task)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    pub fn is_draining(&self) -> bool {
        self.shutdown.draining.is_cancelled()
    }

    /// Runs until drained: registers, then heartbeats and claims until `draining`, lets the runs end, and
    /// tells the queue it goes offline. Fails only when registration is refused for good.
    pub async fn run(self: Arc<Self>) -> Result<(), QueueError> {
        self.recover_spool().await;
        match self.register().await {
            Ok(()) => {}
            Err(_) if self.is_draining() => return Ok(()),
            Err(e) => return Err(e),
        }
        tracing::info!(worker_id = %self.worker_id(), slots = self.settings.clusters.len(), "registered");
        self.observer.registered();
        let beat_stop = CancellationToken::new();
        let beat = tokio::spawn(self.clone().heartbeat_loop(beat_stop.clone()));
        let (forced, give_up) = (self.shutdown.forced.clone(), self.give_up.clone());
        let give_up_timer = tokio::spawn(async move {
            forced.cancelled().await;
            tokio::time::sleep(FORCED_DELIVERY_WINDOW).await;
            give_up.cancel();
        });
        let slots: Vec<_> = self
            .settings
            .clusters
            .iter()
            .map(|cluster| tokio::spawn(self.clone().slot_loop(cluster.clone())))
            .collect();
        for s in slots {
            if let Err(e) = s.await {
                tracing::error!(worker_id = %self.worker_id(), error = %e, "a slot ended abnormally");
            }
        }
        beat_stop.cancel();
        let _ = beat.await;
        give_up_timer.abort();
        let offline = HeartbeatRequest {
            status: WorkerStatus::Offline,
            current_task_id: None,
            running_task_ids: Vec::new(),
            reason: None,
        };
        match self.queue.heartbeat(&offline).await {
            Ok(_) => {
                tracing::info!(worker_id = %self.worker_id(), "told the queue this worker is going offline")
            }
            Err(e) => {
                tracing::warn!(worker_id = %self.worker_id(), error = %e, "could not tell the queue this worker is going offline")
            }
        }
        Ok(())
    }

    /// Registers, retrying while the queue is unavailable, until drained.
    async fn register(&self) -> Result<(), QueueError> {
        let lease = retry(
            "registration",
            &self.shutdown.draining,
            self.observer.as_ref(),
            || self.queue.register(&self.settings.registration),
        )
        .await?;
        self.registered(lease);
        Ok(())
    }

    fn registered(&self, lease: Duration) {
        *self.lease.lock().expect("lease lock") = lease;
        *self.renewed.lock().expect("renewed lock") = Instant::now();
    }

    /// After a failed heartbeat: when the leases could not be renewed for longer than a lease lasts, the
    /// queue has given the runs to other workers, so they stop here (and say so).
    fn check_leases(&self) {
        let lease = *self.lease.lock().expect("lease lock");
        let silent = self.renewed.lock().expect("renewed lock").elapsed();
        if silent <= lease {
            return;
        }
        let held = self.held.lock().expect("held lock");
        for (task, cancel) in held.values().filter(|(_, c)| !c.is_cancelled()) {
            tracing::warn!(
                worker_id = %self.worker_id(), task_id = %task, silent_seconds = silent.as_secs(),
                lease_seconds = lease.as_secs(),
                "no heartbeat reached the queue for longer than a lease lasts: the queue has given this run \
                 to another worker; stopping it here"
            );
            cancel.cancel();
        }
    }

    fn heartbeat_request(&self) -> HeartbeatRequest {
        let ids = self.held_tasks();
        let unusable = self.unusable.lock().expect("unusable lock");
        let reason = (!unusable.is_empty()).then(|| {
            unusable
                .iter()
                .map(|(cluster, why)| format!("{cluster}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        });
        let mut reason = reason.map(crate::Text::from);
        if let Some(r) = &mut reason {
            crate::limits::fit_text(r, 1_900);
        }
        HeartbeatRequest {
            status: if self.is_draining() {
                WorkerStatus::Stopping
            } else if reason.is_some() {
                WorkerStatus::Degraded
            } else if ids.is_empty() {
                WorkerStatus::Idle
            } else {
                WorkerStatus::Busy
            },
            current_task_id: ids.first().copied(),
            running_task_ids: ids,
            reason,
        }
    }

    /// Records whether a slot's runner can run problems, and tells the queue at once when that changed.
    fn set_unusable(&self, cluster: &str, reason: Option<String>) {
        let changed = {
            let mut unusable = self.unusable.lock().expect("unusable lock");
            let before = unusable.get(cluster).cloned();
            match &reason {
                Some(r) => unusable.insert(cluster.to_owned(), r.clone()),
                None => unusable.remove(cluster),
            };
            before != reason
        };
        if changed {
            match &reason {
                Some(r) => {
                    tracing::warn!(worker_id = %self.worker_id(), cluster = %cluster, reason = %r, "this slot cannot run problems: it claims nothing until it can")
                }
                None => {
                    tracing::info!(worker_id = %self.worker_id(), cluster = %cluster, "this slot can run problems again")
                }
            }
            let any = self
                .unusable
                .lock()
                .expect("unusable lock")
                .values()
                .next()
                .cloned();
            self.observer.degraded(any.as_deref());
            self.beat_now.notify_one();
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.beat_now.notified() => {}
            }
            match self.queue.heartbeat(&self.heartbeat_request()).await {
                Ok(resp) => {
                    *self.renewed.lock().expect("renewed lock") = Instant::now();
                    let held = self.held.lock().expect("held lock");
                    for (task, cancel) in held.values() {
                        if resp.cancel_task_ids.contains(task) && !cancel.is_cancelled() {
                            tracing::info!(worker_id = %self.worker_id(), task_id = %task, "the queue says stop: cancelling the run");
                            cancel.cancel();
                        }
                    }
                }
                Err(QueueError::UnknownWorker) => {
                    tracing::warn!(worker_id = %self.worker_id(), "the queue does not know this worker: registering again");
                    match self.queue.register(&self.settings.registration).await {
                        Ok(lease) => self.registered(lease),
                        Err(e) => {
                            tracing::warn!(worker_id = %self.worker_id(), error = %e, "registering again failed")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(worker_id = %self.worker_id(), error = %e, "heartbeat failed");
                    self.check_leases();
                }
            }
        }
    }

    async fn slot_loop(self: Arc<Self>, cluster: String) {
        let mut pause = delays();
        // A slot claims only when its runner can run: checked at start, and again after a run found it could
        // not (with backoff meanwhile, claiming nothing).
        let mut usable = false;
        let mut probe_pause = probe_delays();
        while !self.is_draining() {
            if !usable {
                match self.settings.runner.probe(&cluster).await {
                    Ok(()) => {
                        usable = true;
                        probe_pause = probe_delays();
                        self.set_unusable(&cluster, None);
                    }
                    Err(reason) => {
                        self.set_unusable(&cluster, Some(reason));
                        let wait = probe_pause.next().unwrap_or(Duration::from_secs(30));
                        tokio::select! {
                            _ = self.shutdown.draining.cancelled() => {}
                            _ = tokio::time::sleep(wait) => {}
                        }
                        continue;
                    }
                }
            }
            let claimed = self
                .queue
                .claim(self.settings.claim_wait, &self.shutdown.draining)
                .await;
            let e = match claimed {
                Ok(Some(task)) => {
                    pause = delays();
                    match self.run_task(task, &cluster).await {
                        Err(reason) => {
                            usable = false;
                            self.set_unusable(&cluster, Some(reason));
                        }
                        // After an infrastructure failure the runner is checked again before the next claim,
                        // so that a slot whose cluster broke does not take the retry itself.
                        Ok(Checked::Again) => usable = false,
                        Ok(Checked::Fine) => {}
                    }
                    continue;
                }
                Ok(None) => {
                    pause = delays();
                    continue;
                }
                Err(e) => e,
            };
            match &e {
                QueueError::UnknownWorker => {
                    tracing::warn!(worker_id = %self.worker_id(), "the queue does not know this worker: registering again");
                    let _ = self.register().await;
                }
                QueueError::Refused { .. } => {
                    tracing::debug!(worker_id = %self.worker_id(), error = %e, "claim refused")
                }
                _ => tracing::warn!(worker_id = %self.worker_id(), error = %e, "claim failed"),
            }
            let wait = pause.next().unwrap_or(Duration::from_secs(30));
            tokio::select! {
                _ = self.shutdown.draining.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Runs a claimed task to its reported outcome; `Err` with the reason when the runner could not run here
    /// at all (the task was given back, uncounted), `Ok(Checked::Again)` after an infrastructure failure.
    async fn run_task(&self, claimed: ClaimedTask, cluster: &str) -> Result<Checked, String> {
        let ClaimedTask { task, lease_id } = claimed;
        let run = Run {
            task_id: task.id,
            attempt: task.attempt,
            lease_id,
        };
        let span = tracing::info_span!("run", worker_id = %self.worker_id(), task_id = %task.id, attempt = task.attempt, cluster = %cluster);
        async {
            let spec = TaskSpec::of(&task, self.worker_id(), cluster);
            let deadline = spec.deadline(task.started_at);
            let control = RunControl {
                cancel: CancellationToken::new(),
                interrupt: self.shutdown.forced.child_token(),
            };
            self.held
                .lock()
                .expect("held lock")
                .insert(lease_id, (task.id, control.cancel.clone()));
            tracing::info!(problem_id = %task.problem_id, "running task");
            self.observer.run_started();
            let (tx, rx) = runner::log_channel(runner::LOG_CHANNEL);
            let execution = async {
                let outcome =
                    runner::execute(&self.settings.runner, &spec, deadline, &control, &tx).await;
                drop(tx);
                // Kept at once, while log batches may still be on their way.
                self.prepare(run, outcome)
            };
            let (prepared, ()) =
                tokio::join!(execution, self.ship_logs(run, rx, control.cancel.clone()));
            let unusable = match &prepared {
                Some((
                    _,
                    Spooled {
                        report:
                            Report::Release {
                                reason: Some(r), ..
                            },
                        ..
                    },
                    _,
                )) => Err(r.clone()),
                Some((
                    _,
                    Spooled {
                        report:
                            Report::Fail(FailTaskRequest {
                                failure_kind: Some(FailedBy::Infrastructure),
                                ..
                            }),
                        ..
                    },
                    _,
                )) => Ok(Checked::Again),
                _ => Ok(Checked::Fine),
            };
            if let Some(outcome) = prepared {
                self.deliver(outcome).await;
            }
            self.held.lock().expect("held lock").remove(&lease_id);
            unusable
        }
        .instrument(span)
        .await
    }

    /// Sends a run's log entries in order, in batches (cut to the limits the server accepts), each retried
    /// until the queue has it. A refusal (the task is no longer this worker's) stops the run.
    async fn ship_logs(&self, run: Run, mut rx: LogBatches, cancel: CancellationToken) {
        let mut refused = false;
        let mut seq = 0;
        while let Some(entries) = rx.next_batch().await {
            if refused {
                continue;
            }
            seq += 1;
            let item = Spooled {
                task_id: run.task_id,
                report: Report::Logs {
                    attempt: run.attempt,
                    lease_id: run.lease_id,
                    entries,
                },
            };
            let sent = self
                .deliver_report(
                    "sending task logs",
                    run.lease_id,
                    Some(seq),
                    item,
                    &self.give_up,
                )
                .await;
            match sent {
                Ok(_) => {}
                Err(e @ QueueError::Unavailable(_)) => {
                    tracing::warn!(error = %e, "task logs not delivered")
                }
                Err(e) => {
                    tracing::info!(error = %e, "logs refused: stopping the run");
                    refused = true;
                    cancel.cancel();
                }
            }
        }
    }

    /// Sends one report to the queue.
    async fn send(&self, task_id: Uuid, report: &Report) -> Result<Option<Task>, QueueError> {
        match report {
            Report::Logs {
                attempt,
                lease_id,
                entries,
            } => self
                .queue
                .report_logs(task_id, *attempt, *lease_id, entries)
                .await
                .map(|()| None),
            Report::Complete(req) => self.queue.complete(task_id, req).await.map(Some),
            Report::Fail(req) => self.queue.fail(task_id, req).await.map(Some),
            Report::Release {
                attempt,
                lease_id,
                reason,
            } => self
                .queue
                .release(task_id, *attempt, *lease_id, reason.as_deref())
                .await
                .map(Some),
        }
    }

    /// Keeps a report in the spool, when there is one.
    fn keep(&self, lease_id: Uuid, seq: Option<u64>, item: &Spooled) -> Option<Kept> {
        self.settings.spool.as_ref().and_then(|s| {
            s.keep(lease_id, seq, item)
                .map_err(|e| tracing::error!(error = %e, "could not keep a report in the spool"))
                .ok()
        })
    }

    /// Sends one report, retried while the queue is unavailable until `until` fires, and kept in the spool
    /// (when there is one) until the queue has it or refused it for good.
    async fn deliver_report(
        &self,
        what: &str,
        lease_id: Uuid,
        seq: Option<u64>,
        item: Spooled,
        until: &CancellationToken,
    ) -> Result<Option<Task>, QueueError> {
        let kept = self.keep(lease_id, seq, &item);
        self.send_kept(what, &item, kept, until).await
    }

    /// Sends a report already kept (or not, without a spool), and forgets it once the queue has it or
    /// refused it for good.
    async fn send_kept(
        &self,
        what: &str,
        item: &Spooled,
        kept: Option<Kept>,
        until: &CancellationToken,
    ) -> Result<Option<Task>, QueueError> {
        let spool = self.settings.spool.as_ref();
        self.observer.backlog(1);
        let r = retry(what, until, self.observer.as_ref(), || {
            self.send(item.task_id, &item.report)
        })
        .await;
        self.observer.backlog(-1);
        if !matches!(r, Err(QueueError::Unavailable(_)))
            && let (Some(spool), Some(kept)) = (spool, &kept)
        {
            spool.done(kept);
        }
        r
    }

    /// Delivers the reports a previous process of this worker kept and could not deliver, in order, before
    /// the worker registers (which would give its tasks back).
    async fn recover_spool(&self) {
        let Some(spool) = &self.settings.spool else {
            return;
        };
        let pending = match spool.pending() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool");
                return;
            }
        };
        if !pending.is_empty() {
            tracing::info!(
                reports = pending.len(),
                "delivering the reports kept from before a restart"
            );
        }
        for (kept, item) in pending {
            let r = retry(
                "delivering a kept report",
                &self.shutdown.draining,
                self.observer.as_ref(),
                || self.send(item.task_id, &item.report),
            )
            .await;
            match r {
                Err(e @ QueueError::Unavailable(_)) => {
                    tracing::warn!(error = %e, "kept reports stay in the spool for the next start");
                    return;
                }
                Ok(_) => tracing::info!(task_id = %item.task_id, "a kept report was delivered"),
                Err(e) => {
                    tracing::info!(task_id = %item.task_id, error = %e, "a kept report was refused: dropped")
                }
            }
            spool.done(&kept);
        }
    }

    /// The report of a run's outcome: what the runner produced, made to fit the limits the server accepts
    /// (so that a run is never lost to a refused report), and kept in the spool at once. `None` when there is
    /// nothing to report (the run was cancelled).
    fn prepare(
        &self,
        run: Run,
        outcome: RunOutcome,
    ) -> Option<(&'static str, Spooled, Option<Kept>)> {
        let Run {
            task_id,
            attempt,
            lease_id,
        } = run;
        let outcome = fit_outcome(outcome);
        self.observer.run_ended(match &outcome {
            RunOutcome::Completed { .. } => "completed",
            RunOutcome::Failed { .. } => "failed",
            RunOutcome::TimedOut { .. } => "timeout",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Interrupted => "released",
            RunOutcome::Unusable { .. } => "unusable",
        });
        let (what, report) = match outcome {
            RunOutcome::Completed { result } => (
                "reporting completion",
                Report::Complete(CompleteTaskRequest {
                    attempt,
                    lease_id,
                    result: result.into_iter().collect(),
                }),
            ),
            RunOutcome::Failed {
                error,
                result,
                kind,
            } => (
                "reporting the failure",
                Report::Fail(FailTaskRequest {
                    attempt,
                    lease_id,
                    error: error.into(),
                    status: None,
                    result: result.map(|r| r.into_iter().collect()),
                    failure_kind: Some(kind.failed_by()),
                }),
            ),
            RunOutcome::TimedOut { error, result } => (
                "reporting the timeout",
                Report::Fail(FailTaskRequest {
                    attempt,
                    lease_id,
                    error: error.into(),
                    status: Some(api::FailStatus::Timeout),
                    result: result.map(|r| r.into_iter().collect()),
                    failure_kind: None,
                }),
            ),
            RunOutcome::Cancelled => {
                tracing::info!("run stopped: the task was cancelled or is no longer this worker's");
                return None;
            }
            RunOutcome::Interrupted => (
                "releasing the task",
                Report::Release {
                    attempt,
                    lease_id,
                    reason: None,
                },
            ),
            RunOutcome::Unusable { reason } => {
                tracing::warn!(reason = %reason, "the runner cannot run here: giving the task back, uncounted");
                (
                    "giving the task back",
                    Report::Release {
                        attempt,
                        lease_id,
                        reason: Some(reason),
                    },
                )
            }
        };
        let item = Spooled { task_id, report };
        let kept = self.keep(lease_id, None, &item);
        Some((what, item, kept))
    }

    /// Reports the outcome until the queue has it (or refuses it for good).
    async fn deliver(&self, (what, item, kept): (&'static str, Spooled, Option<Kept>)) {
        match self.send_kept(what, &item, kept, &self.give_up).await {
            Ok(t) => tracing::info!(status = ?t.map(|t| t.status), "outcome delivered"),
            Err(e @ QueueError::Unavailable(_)) => {
                tracing::error!(error = %e, "outcome not delivered: the queue was unreachable too long")
            }
            Err(e) => tracing::info!(error = %e, "outcome refused by the queue"),
        }
    }
}
