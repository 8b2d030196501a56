//! Live updates. The task log is the stream: every state change writes an entry (with the state it entered)
//! and every log line is one, each with an id that only grows. So a stream is "the entries after the last
//! `seq` the client saw", read from the database — which makes a resume exact, works across replicas on one
//! PostgreSQL, and makes a slow subscriber harmless (it reads again from where it is).
//!
//! One [`Tail`] per process polls the log's newest ids every [`TICK`] (one indexed range read, whatever the
//! number of subscribers) and tells subscribers which tasks have new entries, up to the `settled` id: every id
//! at or below it is committed, or was skipped for longer than [`GAP_GRACE`] (PostgreSQL hands out ids before
//! commit, so an id may appear after a higher one; a subscriber reading only up to `settled` never jumps past
//! an entry still to come). A subscriber that falls behind the wake-ups (the bounded channel lagged) just reads
//! again from the database.

use std::{
    collections::{BTreeSet, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::Stream;
use sea_orm::DatabaseConnection;
use task_executor_shared::api::{EventKind, TaskEvent};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::{StoreError, entity::task_log, logs, tasks};

/// How often the tail looks for new entries: the latency of a live update.
pub const TICK: Duration = Duration::from_millis(200);
/// How long an id missing below newer ones is waited for before the tail moves past it.
pub const GAP_GRACE: Duration = Duration::from_secs(2);
/// Entries read at once (by the tail, and by a subscriber).
const PAGE: u64 = 500;

/// New entries up to `upto`: for which tasks, and whether any records a state change.
#[derive(Debug)]
pub struct Advance {
    pub upto: i64,
    pub tasks: HashSet<Uuid>,
    pub status_changed: bool,
}

/// The process's view of the log's progress, shared by every subscriber.
pub struct Tail {
    db: DatabaseConnection,
    settled: watch::Sender<i64>,
    wakes: broadcast::Sender<Arc<Advance>>,
    /// Ends every stream (server shutdown).
    pub stop: CancellationToken,
}

impl Tail {
    pub async fn new(
        db: DatabaseConnection,
        stop: CancellationToken,
    ) -> Result<Arc<Tail>, StoreError> {
        let start = logs::max_id(&db).await?;
        Ok(Arc::new(Tail {
            db,
            settled: watch::Sender::new(start),
            wakes: broadcast::Sender::new(256),
            stop,
        }))
    }

    /// Every id at or below this is committed (or given up on).
    pub fn settled(&self) -> i64 {
        *self.settled.borrow()
    }

    /// Follows the log until `stop`.
    pub async fn run(self: Arc<Self>) {
        let mut settled = self.settled();
        // Ids above `settled` already seen (there is a gap below them), and since when the gap is open.
        let mut seen: BTreeSet<i64> = BTreeSet::new();
        let mut gap_since: Option<Instant> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let rows = match logs::written_after(&self.db, settled, PAGE * 10).await {
                Ok(r) => {
                    failing = false;
                    r
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "the event tail cannot read the log; live updates wait");
                        failing = true;
                    }
                    continue;
                }
            };
            let mut advance = Advance {
                upto: settled,
                tasks: HashSet::new(),
                status_changed: false,
            };
            for (id, task, status) in rows {
                if seen.insert(id) {
                    advance.tasks.insert(task);
                    advance.status_changed |= status;
                }
            }
            loop {
                while seen.first() == Some(&(settled + 1)) {
                    seen.pop_first();
                    settled += 1;
                }
                let Some(&next) = seen.first() else {
                    gap_since = None;
                    break;
                };
                match gap_since {
                    None => {
                        gap_since = Some(Instant::now());
                        break;
                    }
                    Some(t) if t.elapsed() >= GAP_GRACE => {
                        // Ids a rolled-back transaction took: never coming.
                        settled = next - 1;
                        gap_since = None;
                    }
                    Some(_) => break,
                }
            }
            if settled > advance.upto {
                advance.upto = settled;
                self.settled.send_replace(settled);
                let _ = self.wakes.send(Arc::new(advance));
            } else if !advance.tasks.is_empty() {
                // Seen above a gap: told once the gap closes (the subscribers read up to `settled` only).
                let _ = self.wakes.send(Arc::new(Advance {
                    upto: settled,
                    tasks: HashSet::new(),
                    status_changed: false,
                }));
            }
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Advance>> {
        self.wakes.subscribe()
    }
}

/// Where a task stream starts.
pub enum From {
    /// The task's current state first.
    Now,
    /// Right after this `seq` (a resume).
    After(i64),
}

fn event_of(e: task_log::Model, kind: EventKind) -> TaskEvent {
    TaskEvent {
        seq: e.id,
        kind,
        task_id: e.task_id,
        timestamp: e.timestamp,
        status: e.status,
        level: Some(e.level),
        message: Some(e.message),
        context: e.context,
        attempt: e.attempt,
        task: None,
    }
}

/// Why a stream cannot start.
pub enum StartError {
    NotFound,
    Store(StoreError),
}

struct TaskStream {
    tail: Arc<Tail>,
    rx: broadcast::Receiver<Arc<Advance>>,
    task_id: Uuid,
    /// Entries up to here are read.
    cursor: i64,
    pending: VecDeque<TaskEvent>,
    /// The last state change emitted was final: drain, then `end`.
    ended: Option<TaskEvent>,
    done: bool,
}

/// A task's events from `from`: its state (when starting now), then each entry as it is written, then `end`.
pub async fn task_stream(
    tail: Arc<Tail>,
    task_id: Uuid,
    from: From,
) -> Result<impl Stream<Item = TaskEvent> + Send + 'static, StartError> {
    let rx = tail.subscribe();
    let db = tail.db.clone();
    let settled = tail.settled();
    let task = match tasks::get(&db, task_id).await {
        Ok(t) => t,
        Err(StoreError::TaskNotFound(_)) => return Err(StartError::NotFound),
        Err(e) => return Err(StartError::Store(e)),
    };
    let mut s = TaskStream {
        tail,
        rx,
        task_id,
        cursor: settled,
        pending: VecDeque::new(),
        ended: None,
        done: false,
    };
    match from {
        From::Now => {
            // The task's newest entry, settled or not: a task's entries commit in id order (every writer
            // locks the task row before it inserts), so none can appear below it later.
            let seq = logs::last_entry_at(&db, task_id, i64::MAX)
                .await
                .map_err(StartError::Store)?;
            s.cursor = seq;
            let status = logs::last_status_at(&db, task_id, seq)
                .await
                .map_err(StartError::Store)?
                .map(|(_, s)| s)
                .unwrap_or(task.status);
            let first = TaskEvent {
                seq,
                kind: EventKind::Status,
                task_id,
                timestamp: task.updated_at,
                status: Some(status),
                level: None,
                message: None,
                context: None,
                attempt: Some(task.attempt),
                task: Some(Box::new(task.into())),
            };
            if status.is_terminal() {
                s.ended = Some(first.clone());
            }
            s.pending.push_back(first);
        }
        From::After(seq) => {
            s.cursor = seq;
            if task.status.is_terminal() {
                // Its last entries are committed with its final state: read them all, then end.
                s.ended = Some(TaskEvent {
                    seq,
                    kind: EventKind::End,
                    task_id,
                    timestamp: task.updated_at,
                    status: Some(task.status),
                    level: None,
                    message: None,
                    context: None,
                    attempt: Some(task.attempt),
                    task: None,
                });
            }
        }
    }
    Ok(futures_util::stream::unfold(s, |mut s| async move {
        let e = s.next().await?;
        Some((e, s))
    }))
}

impl TaskStream {
    async fn next(&mut self) -> Option<TaskEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.done || self.tail.stop.is_cancelled() {
                return None;
            }
            if let Some(mut last) = self.ended.take() {
                // Whatever was written with the final state (a note on dropped entries) — or, on a resume of
                // a finished task, everything after the resume point — then `end`.
                if let Ok(rest) = logs::task_entries_between(
                    &self.tail.db,
                    self.task_id,
                    self.cursor,
                    i64::MAX,
                    PAGE,
                )
                .await
                {
                    for r in rest {
                        let e = match r.status {
                            Some(_) => event_of(r, EventKind::Status),
                            None => event_of(r, EventKind::Log),
                        };
                        if e.status.is_some_and(|s| s.is_terminal()) {
                            last = e.clone();
                        }
                        self.pending.push_back(e);
                    }
                }
                let seq = self
                    .pending
                    .back()
                    .map_or(last.seq, |e| e.seq)
                    .max(last.seq);
                self.pending.push_back(TaskEvent {
                    seq,
                    kind: EventKind::End,
                    task: None,
                    level: None,
                    message: None,
                    context: None,
                    ..last
                });
                self.done = true;
                continue;
            }
            let settled = self.tail.settled();
            if settled > self.cursor {
                let rows = match logs::task_entries_between(
                    &self.tail.db,
                    self.task_id,
                    self.cursor,
                    settled,
                    PAGE,
                )
                .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(task_id = %self.task_id, error = %e, "a task stream cannot read the log");
                        tokio::time::sleep(TICK * 5).await;
                        continue;
                    }
                };
                let full = rows.len() as u64 == PAGE;
                self.cursor = if full {
                    rows.last().map_or(settled, |r| r.id)
                } else {
                    settled
                };
                for r in rows {
                    let terminal = r.status.is_some_and(|s| s.is_terminal());
                    let kind = if r.status.is_some() {
                        EventKind::Status
                    } else {
                        EventKind::Log
                    };
                    let e = event_of(r, kind);
                    if terminal {
                        self.cursor = e.seq;
                        self.ended = Some(e.clone());
                        self.pending.push_back(e);
                        break;
                    }
                    self.pending.push_back(e);
                }
                if !self.pending.is_empty() || self.ended.is_some() {
                    continue;
                }
            }
            // Wait for new entries of this task (or for a lag: then read again).
            tokio::select! {
                _ = self.tail.stop.cancelled() => return None,
                wake = self.rx.recv() => match wake {
                    Ok(a) if a.tasks.contains(&self.task_id) || a.tasks.is_empty() => {}
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

struct AllStream {
    tail: Arc<Tail>,
    rx: broadcast::Receiver<Arc<Advance>>,
    batch: Option<Uuid>,
    cursor: i64,
    pending: VecDeque<TaskEvent>,
}

/// Every state change of every task (or of one batch's), from now (the newest entry written) or after a
/// `seq`. Never ends by itself.
pub async fn all_stream(
    tail: Arc<Tail>,
    batch: Option<Uuid>,
    after: Option<i64>,
) -> Result<impl Stream<Item = TaskEvent> + Send + 'static, StoreError> {
    let rx = tail.subscribe();
    let cursor = match after {
        Some(seq) => seq,
        None => logs::max_id(&tail.db).await?.max(tail.settled()),
    };
    let s = AllStream {
        tail,
        rx,
        batch,
        cursor,
        pending: VecDeque::new(),
    };
    Ok(futures_util::stream::unfold(s, |mut s| async move {
        let e = s.next().await?;
        Some((e, s))
    }))
}

impl AllStream {
    async fn next(&mut self) -> Option<TaskEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.tail.stop.is_cancelled() {
                return None;
            }
            let settled = self.tail.settled();
            if settled > self.cursor {
                match logs::status_entries_between(
                    &self.tail.db,
                    self.cursor,
                    settled,
                    self.batch,
                    PAGE,
                )
                .await
                {
                    Ok(rows) => {
                        self.cursor = if rows.len() as u64 == PAGE {
                            rows.last().map_or(settled, |r| r.id)
                        } else {
                            settled
                        };
                        self.pending
                            .extend(rows.into_iter().map(|r| event_of(r, EventKind::Status)));
                        if !self.pending.is_empty() {
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the event stream cannot read the log");
                        tokio::time::sleep(TICK * 5).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = self.tail.stop.cancelled() => return None,
                wake = self.rx.recv() => match wake {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}
