//! Tasks as researchers see them: creation (idempotent), lookup, listing, cancellation.

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set, SqlErr,
    Statement, TransactionTrait,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use task_executor_shared::{FailureKind, LogLevel, TaskStatus, api};
use uuid::Uuid;

use super::{
    StoreError, StoreResult,
    entity::task,
    hot::Hot,
    now,
    queue::transition::{self, Change, Entry, Guard},
    script::{self, Script},
};

/// A task to insert, its parameters already made effective.
pub struct NewTask {
    pub problem_id: String,
    pub parameters: Value,
    pub priority: i32,
    /// The client's `Idempotency-Key` and a hash of the request it came with.
    pub idempotency: Option<(String, String)>,
    /// The name of the API token that asks (none when authentication is off).
    pub created_by: Option<String>,
    /// The caps a new task must fit under.
    pub admission: Admission,
}

/// The caps on the queue a new task must fit under (none: no cap), with what this process last counted.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// Pending tasks in the whole queue at most (`MAX_PENDING_TASKS`).
    pub max_pending: Option<u64>,
    /// Pending and running tasks of one token at most (`MAX_ACTIVE_TASKS_PER_TOKEN`).
    pub max_active_per_token: Option<u64>,
    /// The counts last read, shared by the requests of this process.
    pub counted: Arc<Counted>,
}

impl Admission {
    pub fn new(max_pending: Option<u64>, max_active_per_token: Option<u64>) -> Admission {
        Admission {
            max_pending,
            max_active_per_token,
            counted: Arc::default(),
        }
    }
}

/// The admission counts this process read last — the queue's pending tasks, and each token's active ones —
/// plus what it admitted since. Far below a cap, a new task is admitted on these without counting again (a
/// count of a 100,000-task backlog takes milliseconds); near it (within a tenth of the cap, or 100), or once
/// a count is a second old, the count is read again. A refusal is always decided on a fresh count.
#[derive(Debug, Default)]
pub struct Counted {
    pending: Mutex<Option<Count>>,
    active: Mutex<HashMap<String, Count>>,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    n: u64,
    read_at: Instant,
}

/// How long a count is trusted far from its cap.
const COUNT_FRESH: Duration = Duration::from_secs(1);

impl Count {
    /// Whether `more` fit under `max` on this count alone: fresh, and far enough below the cap that what other
    /// replicas or finished tasks changed since cannot matter much.
    fn clearly_fits(&self, more: u64, max: u64) -> bool {
        let margin = (max / 10).max(100);
        self.read_at.elapsed() < COUNT_FRESH && self.n + more + margin <= max
    }
}

/// Seconds a client refused for a full queue or too many active tasks is told to wait.
const ADMISSION_RETRY_AFTER: u64 = 30;

/// Refuses `n` new tasks of `owner` that do not fit under the caps (see [`Counted`] for when the counts are
/// read). Requests racing each other, or other replicas, may overshoot a cap a little: the caps bound
/// runaway submissions, not exact quotas.
pub(super) async fn admit(
    db: &impl ConnectionTrait,
    n: u64,
    owner: Option<&str>,
    admission: &Admission,
) -> StoreResult<()> {
    if let Some(max) = admission.max_pending {
        let known = *admission.counted.pending.lock().expect("counts lock");
        match known {
            Some(c) if c.clearly_fits(n, max) => {}
            _ => {
                let read_at = Instant::now();
                let pending = task::Entity::find()
                    .filter(task::Column::Status.eq(TaskStatus::Pending))
                    .count(db)
                    .await?;
                *admission.counted.pending.lock().expect("counts lock") = Some(Count {
                    n: pending,
                    read_at,
                });
                if pending + n > max {
                    return Err(StoreError::QueueFull {
                        detail: format!(
                            "the queue is full: {pending} tasks are pending and {n} more would exceed MAX_PENDING_TASKS ({max})"
                        ),
                        retry_after: ADMISSION_RETRY_AFTER,
                    });
                }
            }
        }
    }
    if let (Some(max), Some(owner)) = (admission.max_active_per_token, owner) {
        let known = admission
            .counted
            .active
            .lock()
            .expect("counts lock")
            .get(owner)
            .copied();
        match known {
            Some(c) if c.clearly_fits(n, max) => {}
            _ => {
                let read_at = Instant::now();
                let active = task::Entity::find()
                    .filter(task::Column::CreatedBy.eq(owner))
                    .filter(task::Column::Status.is_in([TaskStatus::Pending, TaskStatus::Running]))
                    .count(db)
                    .await?;
                let mut counts = admission.counted.active.lock().expect("counts lock");
                if counts.len() >= 1024 {
                    counts.retain(|_, c| c.read_at.elapsed() < COUNT_FRESH);
                }
                counts.insert(owner.to_owned(), Count { n: active, read_at });
                if active + n > max {
                    return Err(StoreError::TooMany {
                        kind: "too_many_tasks",
                        detail: format!(
                            "token `{owner}` has {active} pending or running tasks and {n} more would exceed MAX_ACTIVE_TASKS_PER_TOKEN ({max})"
                        ),
                        retry_after: ADMISSION_RETRY_AFTER,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Adds `n` tasks of `owner` that were just created to the counts (so that the next admissions see them).
pub(super) fn admitted(admission: &Admission, n: u64, owner: Option<&str>) {
    if let Some(c) = admission
        .counted
        .pending
        .lock()
        .expect("counts lock")
        .as_mut()
    {
        c.n += n;
    }
    if let Some(owner) = owner
        && let Some(c) = admission
            .counted
            .active
            .lock()
            .expect("counts lock")
            .get_mut(owner)
    {
        c.n += n;
    }
}

/// Whether [`create`] made a new task or found the one an earlier request with the same key made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

/// Creates a task and its first log entry, all or nothing. With an idempotency key already used, answers
/// the task made then when the request is the same, or a conflict when it is not.
#[tracing::instrument(skip_all, fields(problem_id = %new.problem_id))]
pub async fn create(db: &DatabaseConnection, new: NewTask) -> StoreResult<(task::Model, Created)> {
    if let Some((key, hash)) = &new.idempotency
        && let Some(found) = by_idempotency_key(db, key, hash, new.created_by.as_deref()).await?
    {
        return Ok((found, Created::Existing));
    }
    admit(db, 1, new.created_by.as_deref(), &new.admission).await?;
    let at = now();
    let mut model = pending_task(
        Uuid::new_v4(),
        &new.problem_id,
        new.parameters.clone(),
        new.priority,
        at,
    );
    model.idempotency_key = Set(new.idempotency.as_ref().map(|(k, _)| k.clone()));
    model.request_hash = Set(new.idempotency.as_ref().map(|(_, h)| h.clone()));
    model.created_by = Set(new.created_by.clone());
    let context = json!({"event": "created", "priority": new.priority});
    match insert_with_entry(db, model, context).await {
        Ok(inserted) => {
            admitted(&new.admission, 1, new.created_by.as_deref());
            Ok((inserted, Created::New))
        }
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            // Another request with the same key won the race: answer what it made.
            if let Some((key, hash)) = &new.idempotency
                && let Some(found) =
                    by_idempotency_key(db, key, hash, new.created_by.as_deref()).await?
            {
                return Ok((found, Created::Existing));
            }
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Inserts a new task with its "Task created" entry, all or nothing: on PostgreSQL as one statement (the
/// entry inserted from the row the insert returned), on SQLite as one script (one transaction, one hand-off to
/// its thread).
async fn insert_with_entry(
    db: &DatabaseConnection,
    model: task::ActiveModel,
    context: Value,
) -> Result<task::Model, DbErr> {
    if db.get_database_backend() == DbBackend::Postgres {
        let built = task::Entity::insert(model).build(DbBackend::Postgres);
        let mut values = built.values.map(|v| v.0).unwrap_or_default();
        let first = values.len() + 1;
        values.extend([
            LogLevel::Info.to_string().into(),
            LogLevel::Info.severity().into(),
            context.into(),
        ]);
        let sql = format!(
            "WITH inserted AS ({} RETURNING *), \
             logged AS ( \
                INSERT INTO task_logs (task_id, timestamp, level, severity, message, context, status) \
                SELECT id, created_at, ${}, ${}, 'Task created', ${}, status FROM inserted) \
             SELECT * FROM inserted",
            built.sql,
            first,
            first + 1,
            first + 2
        );
        return task::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .one(&Hot(db))
            .await?
            .ok_or_else(|| DbErr::RecordNotInserted);
    }
    // SQLite: one script (one hand-off to SQLite's thread), a transaction of its own.
    let id = model.id.clone().take().ok_or(DbErr::RecordNotInserted)?;
    let mut script = Script::begin();
    script
        .push_built(
            task::Entity::insert(model).build(DbBackend::Sqlite),
            " RETURNING *",
        )
        .push(
            "INSERT INTO task_logs (task_id, timestamp, level, severity, message, context, status) \
             SELECT id, created_at, ?, ?, 'Task created', ?, status FROM tasks WHERE id = ?",
            [
                LogLevel::Info.to_string().into(),
                LogLevel::Info.severity().into(),
                context.into(),
                id.into(),
            ],
        )
        .commit();
    let rows = script::run(db, script).await?;
    let row = rows
        .first()
        .and_then(|r| r.first())
        .ok_or(DbErr::RecordNotInserted)?;
    task::Model::from_query_result(row, "")
}

/// A new task row: pending, never claimed, created at `at` (without an idempotency key, creator or batch;
/// the caller sets those).
pub(super) fn pending_task(
    id: Uuid,
    problem_id: &str,
    parameters: Value,
    priority: i32,
    at: chrono::DateTime<chrono::Utc>,
) -> task::ActiveModel {
    task::ActiveModel {
        id: Set(id),
        problem_id: Set(problem_id.to_owned()),
        status: Set(TaskStatus::Pending),
        priority: Set(priority),
        parameters: Set(parameters),
        result: Set(None),
        worker_id: Set(None),
        attempt: Set(0),
        lease_expires_at: Set(None),
        idempotency_key: Set(None),
        request_hash: Set(None),
        created_at: Set(at),
        updated_at: Set(at),
        started_at: Set(None),
        completed_at: Set(None),
        lease_id: Set(None),
        uncounted_requeues: Set(0),
        log_entries: Set(0),
        log_dropped: Set(0),
        created_by: Set(None),
        batch_id: Set(None),
    }
}

async fn by_idempotency_key(
    db: &DatabaseConnection,
    key: &str,
    hash: &str,
    owner: Option<&str>,
) -> StoreResult<Option<task::Model>> {
    let found = task::Entity::find()
        .filter(task::Column::IdempotencyKey.eq(key))
        .filter(match owner {
            Some(o) => task::Column::CreatedBy.eq(o),
            None => task::Column::CreatedBy.is_null(),
        })
        .one(db)
        .await?;
    match found {
        Some(t) if t.request_hash.as_deref() == Some(hash) => Ok(Some(t)),
        Some(t) => Err(StoreError::Conflict {
            kind: "idempotency_key_reused",
            detail: format!(
                "Idempotency-Key was already used for task {} with a different request body",
                t.id
            ),
        }),
        None => Ok(None),
    }
}

pub async fn get(db: &impl ConnectionTrait, id: Uuid) -> StoreResult<task::Model> {
    task::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(StoreError::TaskNotFound(id))
}

/// Filters of `GET /api/v1/tasks`.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub status: Option<TaskStatus>,
    pub problem_id: Option<String>,
    pub worker_id: Option<String>,
    pub batch_id: Option<Uuid>,
    pub limit: u64,
    pub offset: u64,
}

impl ListFilter {
    fn apply(&self, mut q: sea_orm::Select<task::Entity>) -> sea_orm::Select<task::Entity> {
        if let Some(s) = self.status {
            q = q.filter(task::Column::Status.eq(s));
        }
        if let Some(p) = &self.problem_id {
            q = q.filter(task::Column::ProblemId.eq(p.as_str()));
        }
        if let Some(w) = &self.worker_id {
            q = q.filter(task::Column::WorkerId.eq(w.as_str()));
        }
        if let Some(b) = self.batch_id {
            q = q.filter(task::Column::BatchId.eq(b));
        }
        q
    }
}

/// Where a keyset page starts: after this task (creation time, id), in the page's order.
pub type Cursor = Option<(chrono::DateTime<chrono::Utc>, Uuid)>;

/// Tasks matching the filter (its limit and offset aside), oldest first, after `after` (creation time and
/// id of the last one of the previous page): for reading any number of tasks a page at a time.
pub async fn page_after(
    db: &DatabaseConnection,
    f: &ListFilter,
    after: Cursor,
    limit: u64,
) -> StoreResult<Vec<task::Model>> {
    keyset_page(db, f, after, limit, false).await
}

/// The same newest first, before `before`: the dashboard's task list, as cheap on the last page as on the
/// first.
pub async fn page_before(
    db: &DatabaseConnection,
    f: &ListFilter,
    before: Cursor,
    limit: u64,
) -> StoreResult<Vec<task::Model>> {
    keyset_page(db, f, before, limit, true).await
}

async fn keyset_page(
    db: &DatabaseConnection,
    f: &ListFilter,
    from: Cursor,
    limit: u64,
    newest_first: bool,
) -> StoreResult<Vec<task::Model>> {
    use sea_orm::{Condition, Order};
    let mut q = f.apply(task::Entity::find());
    if let Some((at, id)) = from {
        let (time, tie) = if newest_first {
            (task::Column::CreatedAt.lt(at), task::Column::Id.lt(id))
        } else {
            (task::Column::CreatedAt.gt(at), task::Column::Id.gt(id))
        };
        q = q.filter(
            Condition::any().add(time).add(
                Condition::all()
                    .add(task::Column::CreatedAt.eq(at))
                    .add(tie),
            ),
        );
    }
    let order = if newest_first {
        Order::Desc
    } else {
        Order::Asc
    };
    Ok(q.order_by(task::Column::CreatedAt, order.clone())
        .order_by(task::Column::Id, order)
        .limit(limit)
        .all(db)
        .await?)
}

/// Tasks matching the filter, newest first.
pub async fn list(db: &DatabaseConnection, f: &ListFilter) -> StoreResult<Vec<task::Model>> {
    let q = f.apply(task::Entity::find());
    Ok(q.order_by_desc(task::Column::CreatedAt)
        .order_by_desc(task::Column::Id)
        .limit(f.limit)
        .offset(f.offset)
        .all(db)
        .await?)
}

/// Cancels a pending or running task. A running task keeps its worker, which learns of the cancellation from
/// its next heartbeat or report.
#[tracing::instrument(skip(db), fields(task_id = %id))]
pub async fn cancel(db: &DatabaseConnection, id: Uuid) -> StoreResult<task::Model> {
    let txn = db.begin().await?;
    let change = Change::End {
        status: TaskStatus::Cancelled,
        result: None,
    };
    let entry = Entry {
        level: LogLevel::Info,
        message: "Task cancelled".to_owned(),
        context: json!({"event": "cancelled"}),
        attempt: None,
    };
    let Some(task) = transition::apply(&txn, Guard::Task(id), change, entry).await? else {
        drop(txn);
        let existing = get(db, id).await?;
        return Err(StoreError::Conflict {
            kind: "task_not_cancellable",
            detail: format!(
                "task {id} is already {} and cannot be cancelled",
                existing.status
            ),
        });
    };
    txn.commit().await?;
    Ok(task)
}

fn as_object(v: &Value) -> api::JsonObject {
    match v {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => api::JsonObject::new(),
    }
}

impl From<task::Model> for api::Task {
    fn from(m: task::Model) -> Self {
        api::Task {
            failure_kind: FailureKind::of(m.status, m.result.as_ref()),
            status: m.status,
            parameters: as_object(&m.parameters),
            id: m.id,
            problem_id: m.problem_id,
            priority: m.priority,
            worker_id: m.worker_id,
            result: m.result,
            attempt: m.attempt,
            lease_expires_at: m.lease_expires_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
            started_at: m.started_at,
            completed_at: m.completed_at,
            created_by: m.created_by,
            batch_id: m.batch_id,
        }
    }
}

impl From<task::Model> for api::TaskSummary {
    fn from(m: task::Model) -> Self {
        api::TaskSummary {
            failure_kind: FailureKind::of(m.status, m.result.as_ref()),
            status: m.status,
            id: m.id,
            problem_id: m.problem_id,
            priority: m.priority,
            worker_id: m.worker_id,
            attempt: m.attempt,
            created_at: m.created_at,
            updated_at: m.updated_at,
            batch_id: m.batch_id,
        }
    }
}
