//! The server side of the worker protocol — registration, heartbeats, claims, reports, releases and recovery
//! — in one place for the HTTP handlers and the internal workers alike: each call goes to the store, records
//! the metrics and wakes the claims waiting in this process, so both kinds of worker are served the same.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sea_orm::DatabaseConnection;
use task_executor_shared::api;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    heartbeats::Heartbeats,
    metrics::Metrics,
    store::{
        StoreError, StoreResult,
        entity::task,
        hot::Hot,
        queue::{self, Claim, HeartbeatOutcome, LeasePolicy, Outcome, ReapReport, RunRef},
        workers::{self, Registered},
    },
};

/// How often a waiting claim looks at the queue when nothing wakes it, unless told otherwise
/// (`CLAIM_POLL_INTERVAL_MS`).
const POLL_TICK: Duration = Duration::from_millis(500);

/// The channel of the queue's notifications (PostgreSQL only): a replica announces there the tasks it created
/// ([`announce`]), and a trigger on `tasks` the tasks put back to `pending`.
pub const QUEUE_CHANNEL: &str = "task_executor_queue";

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
    /// How often a waiting claim looks when nothing wakes it.
    poll_tick: Duration,
    /// Bumped at every wake-up: a look at the queue that found nothing holds until the next one.
    generation: Arc<AtomicU64>,
    /// Per worker with claims in this process, the last look that found nothing (see [`Dispatcher::look`]).
    looks: Arc<Mutex<HashMap<String, Weak<LookSlot>>>>,
    /// The writer of heartbeats, in batches.
    heartbeats: Heartbeats,
    /// Signalled when this process created tasks, for [`announce`] to tell the other replicas.
    created: Arc<Notify>,
    /// Set with `created` when claims were waiting here, to the wake-up generation that creation began:
    /// [`announce`] then lets them look first (0: nothing to wait for).
    local_first: Arc<AtomicU64>,
    /// The generations of the looks at the queue that answered.
    looked: Arc<Looked>,
    /// This process among the replicas: the payload of its announcements, which its own listener skips.
    replica: Arc<str>,
}

/// The looks at the queue of one worker's claims in this process, one at a time, and the last one if it found
/// nothing.
type LookSlot = tokio::sync::Mutex<Option<EmptyLook>>;

/// A look at the queue that found nothing for a worker.
#[derive(Debug, Clone, Copy)]
struct EmptyLook {
    /// The wake-up generation it was made in.
    generation: u64,
    at: Instant,
    free_slots: i64,
}

/// Per-worker look slots are swept of dead entries when the map reaches this size.
const SWEEP_LOOKS_AT: usize = 1024;

/// The latest wake-up generation a look at the queue was made in (see [`Dispatcher::look`]), once it answered,
/// and a signal for whoever waits for one.
#[derive(Default)]
struct Looked {
    generation: AtomicU64,
    signal: Notify,
}

impl Looked {
    /// A look made in `generation` answered.
    fn answered(&self, generation: u64) {
        if self.generation.fetch_max(generation, Ordering::SeqCst) < generation {
            self.signal.notify_waiters();
        }
    }

    /// Until a look made in `generation` or later has answered (one made before, the task it is waited for
    /// may not have existed yet).
    async fn since(&self, generation: u64) {
        loop {
            let signal = self.signal.notified();
            tokio::pin!(signal);
            signal.as_mut().enable();
            if self.generation.load(Ordering::SeqCst) >= generation {
                return;
            }
            signal.await;
        }
    }
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
            heartbeats: Heartbeats::start(db.clone(), lease),
            db,
            lease,
            metrics,
            queue_changed: Arc::new(Notify::new()),
            waiting: Arc::default(),
            max_waiting,
            poll_tick: POLL_TICK,
            generation: Arc::default(),
            looks: Arc::default(),
            created: Arc::new(Notify::new()),
            local_first: Arc::default(),
            looked: Arc::default(),
            replica: Uuid::new_v4().simple().to_string().into(),
        }
    }

    /// Waiting claims look at the queue every `tick` when nothing wakes them.
    pub fn poll_every(mut self, tick: Duration) -> Self {
        self.poll_tick = tick;
        self
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

    /// A task became claimable: wake the claims waiting in this process. (A task put back to `pending` is
    /// also announced to every replica by the database, this one included: see [`listen`].)
    pub fn wake(&self) {
        self.wake_generation();
    }

    /// [`Dispatcher::wake`], answering the generation it began.
    fn wake_generation(&self) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.queue_changed.notify_waiters();
        generation
    }

    /// This process created tasks (their commit is done): wake the claims waiting here, and have [`announce`]
    /// tell the other replicas (if claims were waiting here, once a look begun after this wake-up has answered:
    /// see [`LOCAL_FIRST`]). In this order: tokio keeps the task woken last for this thread, to run once the
    /// creating request yields, and leaves the others to an idle thread at once. Woken the other way round, the
    /// claims waited behind the creation's answer: dispatch on one replica took p50 2.20–2.49 ms instead of
    /// 1.99–2.06 (four interleaved pairs of `queue_bench` runs).
    pub fn created(&self) {
        let waited = !self.waiting.lock().expect("waiting lock").is_empty();
        let generation = self.wake_generation();
        if waited {
            self.local_first.fetch_max(generation, Ordering::SeqCst);
        }
        self.created.notify_one();
    }

    /// The look slot of a worker, shared by its claims in this process while any lives.
    fn look_slot(&self, worker_id: &str) -> Arc<LookSlot> {
        let mut looks = self.looks.lock().expect("looks lock");
        if let Some(slot) = looks.get(worker_id).and_then(Weak::upgrade) {
            return slot;
        }
        if looks.len() >= SWEEP_LOOKS_AT {
            looks.retain(|_, slot| slot.strong_count() > 0);
        }
        let slot = Arc::new(LookSlot::default());
        looks.insert(worker_id.to_owned(), Arc::downgrade(&slot));
        slot
    }

    /// Forgets a worker's last empty look: its capacity or its problems changed, so its next claim looks.
    fn forget_look(&self, worker_id: &str) {
        let slot = self
            .looks
            .lock()
            .expect("looks lock")
            .get(worker_id)
            .and_then(Weak::upgrade);
        if let Some(slot) = slot
            && let Ok(mut last) = slot.try_lock()
        {
            *last = None;
        }
    }

    /// One look at the queue for a worker. The looks of one worker's claims in this process take turns, and
    /// one that follows a look that found nothing, with no wake-up since and within a poll tick, finds nothing
    /// without asking the database: after a wake-up, one of a worker's 250 waiting claims looks, not all 250
    /// (each look may scan the whole backlog for a worker whose problems match none of it).
    async fn look(&self, worker_id: &str, slot: &LookSlot) -> StoreResult<Claim> {
        let mut last = slot.lock().await;
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(e) = *last
            && e.generation == generation
            && e.at.elapsed() < self.poll_tick
        {
            return Ok(Claim::Empty {
                free_slots: e.free_slots,
            });
        }
        // Boxed: a claim waiting between looks keeps only the box's pointer, not room for the query's state.
        let found = Box::pin(queue::claim(&self.db, worker_id, &self.lease)).await;
        self.looked.answered(generation);
        *last = match &found {
            Ok(Claim::Empty { free_slots }) => Some(EmptyLook {
                generation,
                at: Instant::now(),
                free_slots: *free_slots,
            }),
            _ => None,
        };
        found
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
        self.forget_look(&r.worker.id);
        self.released(&r.released, "worker_reregistered");
        tracing::info!(worker_id = %r.worker.id, created = r.created, released = r.released.len(), "worker registered");
        Ok(r)
    }

    pub async fn heartbeat(
        &self,
        worker_id: &str,
        req: &api::HeartbeatRequest,
    ) -> StoreResult<HeartbeatOutcome> {
        let recorded = self.heartbeats.record(worker_id, req).await?;
        let beat = queue::Beat { worker_id, req };
        let out = queue::settle_heartbeat(&self.db, beat, recorded, &self.lease).await?;
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
        let slot = self.look_slot(worker_id);
        loop {
            // Subscribe before looking, so that a task created meanwhile cannot be missed.
            let notified = self.queue_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let free_slots = match self.look(worker_id, &slot).await? {
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
                _ = tokio::time::timeout((deadline - now).min(self.poll_tick), notified) => {}
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
        let t = queue::finish(&self.db, task_id, run, outcome, &self.lease).await?;
        self.forget_look(worker_id);
        if t.status == task_executor_shared::TaskStatus::Pending {
            tracing::warn!(task_id = %t.id, worker_id = %worker_id, "infrastructure failure: task requeued");
            self.metrics.tasks_requeued(1, "infrastructure_failure");
            self.wake();
        } else {
            tracing::info!(task_id = %t.id, worker_id = %worker_id, status = %t.status, "task finished");
            self.metrics.task_finished(&t);
        }
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
        self.forget_look(worker_id);
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

/// Wakes this process's waiting claims whenever a task becomes claimable anywhere — created through another
/// replica (its [`announce`]), or put back to `pending` by any replica (the trigger) — by listening to the
/// database's [`QUEUE_CHANNEL`] on a connection of its own (PostgreSQL). After a lost connection (a database restart) it connects again, backing off up to
/// 10 s, and wakes the claims once, since a notification may have been missed meanwhile; the claims' own poll
/// tick covers that gap.
pub async fn listen(url: String, dispatcher: Dispatcher, stop: CancellationToken) {
    use sea_orm::sqlx::postgres::PgListener;
    let mut backoff = Duration::from_millis(200);
    let mut failing = false;
    loop {
        let connect = async {
            let mut l = PgListener::connect(&url).await?;
            l.listen(QUEUE_CHANNEL).await?;
            Ok::<_, sea_orm::sqlx::Error>(l)
        };
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            c = connect => c,
        };
        match connected {
            Ok(mut listener) => {
                if failing {
                    tracing::info!("listening to the queue's notifications again");
                }
                backoff = Duration::from_millis(200);
                dispatcher.wake();
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        n = listener.try_recv() => n,
                    };
                    match next {
                        // This process's own announcement: its claims were woken already.
                        Ok(Some(n)) if n.payload() == &*dispatcher.replica => {}
                        Ok(Some(_)) => dispatcher.wake(),
                        // The connection dropped; the next call connects again (and may fail).
                        Ok(None) => dispatcher.wake(),
                        Err(e) => {
                            tracing::warn!(error = %e, "lost the queue's notifications: claims poll until they are back");
                            failing = true;
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot listen to the queue's notifications: claims poll until then");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// At most one announcement of new tasks per this gap: the creations signalled meanwhile are covered by the next
/// one. Each `NOTIFY` wakes every replica's listener, this one's included: under a stream of creations they came
/// to about one per three creations, and PostgreSQL spent about a tenth more per task for them. The gap bounds
/// them to 200/s, for at most 5 ms more before another replica hears of a task (plus [`LOCAL_FIRST`]).
const ANNOUNCE_GAP: Duration = Duration::from_millis(5);

/// How long, at most, an announcement waits when claims were waiting in the creating process: they were woken at
/// once and will likely take the task, so the announcement goes out once a look at the queue begun after the
/// wake-up has answered (a claim's statement, ~0.5 ms), rather than have the `NOTIFY`, and every replica's
/// listener it wakes, compete with those claims for the machine. The other replicas may still be needed: the
/// claims here may not match the task, or be at capacity. The bound applies when no such look answers within
/// it (a look that scans a backlog of other problems, a busy pool, a database that hangs); tokio rounds it up
/// to the next millisecond, so it is 2–3 ms, well above a look on a busy machine.
///
/// Interleaved pairs of `queue_bench` runs, p50 with the wait against without it. On one replica: 1.98–2.32 ms
/// against 2.20–2.57 (four pairs); 2.24–2.59 against 2.08–2.71 in a noisier hour (four, inconclusive); with
/// this bound, 2.02–2.60 against 2.26–2.85 in a slow hour (four; with a 1 ms bound, no better than without in
/// three). From replica A to a claim on B while a claim for other problems waits on A, a few tenths of a
/// millisecond more: 2.61–3.24 against 2.58–3.16, 2.79–3.07 against 2.59–2.76, 2.78–3.57 against 2.74–3.16. A
/// fixed 1 ms wait instead had cost that path 2–2.5 ms.
const LOCAL_FIRST: Duration = Duration::from_millis(2);

/// Tells the other replicas (PostgreSQL) of the tasks this process created, once their commit is done: a
/// `NOTIFY` on a connection of the pool, one at a time and at most one per [`ANNOUNCE_GAP`] (when claims waited
/// here, after one of their looks, or [`LOCAL_FIRST`]), each covering every creation signalled before it
/// started. (A `NOTIFY` inside the creating transaction would serialize the commits of all creations on the
/// database's notification lock.) A creation whose announcement is lost — the process stopped just after the commit, or
/// the database was unreachable — is found by the other replicas' claims at their next poll.
pub async fn announce(dispatcher: Dispatcher, stop: CancellationToken) {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = dispatcher.created.notified() => {}
        }
        let woken = dispatcher.local_first.swap(0, Ordering::SeqCst);
        if woken > 0 {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = dispatcher.looked.since(woken) => {}
                _ = tokio::time::sleep(LOCAL_FIRST) => {}
            }
        }
        let notify = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [QUEUE_CHANNEL.into(), dispatcher.replica.to_string().into()],
        );
        match Hot(&dispatcher.db).execute_raw(notify).await {
            Ok(_) if failing => {
                tracing::info!("announcing new tasks to the other replicas again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot announce new tasks to the other replicas: their claims find them at their next poll");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ANNOUNCE_GAP) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::Looked;

    /// A wait for the looks of wake-up generation 2 holds through a look of generation 1 (begun before that
    /// wake-up: the new task may not have existed for it) and ends with one of generation 2 or later.
    #[tokio::test]
    async fn a_wait_for_a_look_ends_only_with_one_begun_after_its_wake_up() {
        let looked = Arc::new(Looked::default());
        let waiting = tokio::spawn({
            let looked = looked.clone();
            async move { looked.since(2).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        looked.answered(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "a look from before the wake-up does not count"
        );
        looked.answered(3);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a later look ends the wait")
            .unwrap();
        // One has answered already: no wait at all.
        tokio::time::timeout(Duration::from_secs(5), looked.since(3))
            .await
            .expect("answers at once");
    }
}
