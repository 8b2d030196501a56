//! Live updates. The task log is the stream: every state change writes an entry (with the state it entered)
//! and every log line is one, each with an id that only grows. So a stream is "the entries after the last
//! `seq` the client saw", read from the database — which makes a resume exact, works across replicas on one
//! PostgreSQL, and makes a slow subscriber harmless (it reads again from where it is).
//!
//! One [`Tail`] per process polls the log's newest ids every [`TICK`] (one indexed range read, whatever the
//! number of subscribers) and wakes the subscribers with the tasks that have new entries. A task stream reads
//! its task's entries at once: they commit in id order (every writer locks the task row first). The stream
//! of every task's state changes reads only up to the `settled` id: every id at or below it is committed, or
//! was missing for longer than [`GAP_GRACE`] (PostgreSQL hands out ids before commit, so across tasks an id
//! may appear after a higher one). A subscriber that falls behind the wake-ups (the bounded channel lagged)
//! just reads again from the database.

use std::{
    collections::{BTreeSet, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
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
/// How long an id missing below newer ones is waited for before the tail moves past it (and the streams of
/// state changes with it). Long enough for the longest transaction (a 10,000-task batch); ids are only ever
/// missing for good when a transaction that wrote a log entry rolled back, which is rare, so the wait is
/// rarely paid.
pub const GAP_GRACE: Duration = Duration::from_secs(30);
/// Entries read at once (by the tail, and by a subscriber).
const PAGE: u64 = 500;

/// A wake-up: the tasks with entries seen since the last one (empty when only `settled` moved).
#[derive(Debug)]
pub struct Advance {
    pub tasks: HashSet<Uuid>,
}

/// The process's view of the log's progress, shared by every subscriber.
pub struct Tail {
    db: DatabaseConnection,
    settled: watch::Sender<i64>,
    latest_status: AtomicI64,
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
            latest_status: AtomicI64::new(start),
            wakes: broadcast::Sender::new(256),
            stop,
        }))
    }

    /// Every id at or below this is committed (or given up on).
    pub fn settled(&self) -> i64 {
        *self.settled.borrow()
    }

    /// The newest state-change entry seen (0 before any): a stream of state changes whose cursor is at or
    /// above it has nothing to read up to `settled`.
    pub fn latest_status(&self) -> i64 {
        self.latest_status.load(Ordering::Acquire)
    }

    /// Follows the log until `stop`.
    pub async fn run(self: Arc<Self>) {
        let mut settled = self.settled();
        // Ids above `settled` already seen (there is a gap below them), and the gap waited for: its first
        // missing id and since when.
        let mut seen: BTreeSet<i64> = BTreeSet::new();
        let mut gap: Option<(i64, Instant)> = None;
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
            let before = settled;
            let mut advance = Advance {
                tasks: HashSet::new(),
            };
            for (id, task, status) in rows {
                if seen.insert(id) {
                    advance.tasks.insert(task);
                    if status {
                        self.latest_status.fetch_max(id, Ordering::AcqRel);
                    }
                }
            }
            loop {
                while seen.first() == Some(&(settled + 1)) {
                    seen.pop_first();
                    settled += 1;
                }
                let Some(&next) = seen.first() else {
                    gap = None;
                    break;
                };
                match gap {
                    Some((missing, since)) if missing == settled + 1 => {
                        if since.elapsed() < GAP_GRACE {
                            break;
                        }
                        // Ids a rolled-back transaction took (or one that held them too long): move on.
                        tracing::debug!(from = missing, to = next - 1, "log ids skipped");
                        settled = next - 1;
                        gap = None;
                    }
                    // A new gap (or the one waited for closed and another is open): its own clock.
                    _ => {
                        gap = Some((settled + 1, Instant::now()));
                        break;
                    }
                }
            }
            let moved = settled > before;
            if moved {
                self.settled.send_replace(settled);
            }
            // Task streams read their task's entries as soon as they are seen (a task's entries commit in id
            // order); state-change streams read up to `settled`.
            if moved || !advance.tasks.is_empty() {
                let _ = self.wakes.send(Arc::new(advance));
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
    /// A resume at or after the last event of a finished task: there is nothing more, ever.
    Finished,
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
    /// New entries may be there: read before waiting.
    dirty: bool,
}

/// A task's events from `from`: its state (when starting now), then each entry as it is written, then `end`.
pub async fn task_stream(
    tail: Arc<Tail>,
    task_id: Uuid,
    from: From,
) -> Result<impl Stream<Item = TaskEvent> + Send + 'static, StartError> {
    let rx = tail.subscribe();
    let db = tail.db.clone();
    let task = match tasks::get(&db, task_id).await {
        Ok(t) => t,
        Err(StoreError::TaskNotFound(_)) => return Err(StartError::NotFound),
        Err(e) => return Err(StartError::Store(e)),
    };
    let mut s = TaskStream {
        tail,
        rx,
        task_id,
        cursor: 0,
        pending: VecDeque::new(),
        ended: None,
        done: false,
        dirty: true,
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
            if task.status.is_terminal()
                && logs::last_entry_at(&db, task_id, i64::MAX)
                    .await
                    .map_err(StartError::Store)?
                    <= seq
            {
                return Err(StartError::Finished);
            }
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
    fn event(r: task_log::Model) -> TaskEvent {
        match r.status {
            Some(_) => event_of(r, EventKind::Status),
            None => event_of(r, EventKind::Log),
        }
    }

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
                // a finished task, everything after the resume point, page by page — then `end`. A failed
                // read ends the stream without `end`, so that the client resumes.
                loop {
                    let rest = logs::task_entries_between(
                        &self.tail.db,
                        self.task_id,
                        self.cursor,
                        i64::MAX,
                        PAGE,
                    )
                    .await;
                    let Ok(rest) = rest else {
                        self.done = true;
                        break;
                    };
                    let full = rest.len() as u64 == PAGE;
                    for r in rest {
                        self.cursor = r.id;
                        let e = Self::event(r);
                        if e.status.is_some_and(|s| s.is_terminal()) {
                            last = e.clone();
                        }
                        self.pending.push_back(e);
                    }
                    if !full {
                        let seq = self.cursor.max(last.seq);
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
                        break;
                    }
                    if self.pending.len() >= PAGE as usize {
                        // Hand these out first; come back for the next page.
                        self.ended = Some(last);
                        break;
                    }
                }
                continue;
            }
            if self.dirty {
                // A task's entries commit in id order (every writer locks the task row first), so reading
                // past the tail's `settled` mark never skips one of them.
                let rows = match logs::task_entries_between(
                    &self.tail.db,
                    self.task_id,
                    self.cursor,
                    i64::MAX,
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
                self.dirty = rows.len() as u64 == PAGE;
                for r in rows {
                    self.cursor = r.id;
                    let e = Self::event(r);
                    if e.status.is_some_and(|s| s.is_terminal()) {
                        self.ended = Some(e.clone());
                        self.pending.push_back(e);
                        break;
                    }
                    self.pending.push_back(e);
                }
                continue;
            }
            // Wait for new entries of this task (or for a lag: then read again).
            tokio::select! {
                _ = self.tail.stop.cancelled() => return None,
                wake = self.rx.recv() => match wake {
                    Ok(a) => self.dirty = a.tasks.contains(&self.task_id),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.dirty = true,
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
            if settled > self.cursor && self.tail.latest_status() <= self.cursor {
                // No state change written since the cursor: nothing to read.
                self.cursor = settled;
            }
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
