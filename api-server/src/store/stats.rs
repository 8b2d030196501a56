//! Counts for `/health`, `/metrics` and the dashboard's overview.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use task_executor_shared::TaskStatus;

use super::{StoreResult, entity::task};

/// The live part of the queue: pending and running tasks, and when the oldest pending one was created.
pub struct LiveQueue {
    pub pending: u64,
    pub running: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// How many tasks are pending and running: both states are served by indexes and stay small, however many
/// finished tasks the table keeps.
pub async fn live_counts(db: &DatabaseConnection) -> StoreResult<(u64, u64)> {
    let count = |status: TaskStatus| {
        task::Entity::find()
            .filter(task::Column::Status.eq(status))
            .count(db)
    };
    Ok((
        count(TaskStatus::Pending).await?,
        count(TaskStatus::Running).await?,
    ))
}

/// Reads [`LiveQueue`].
pub async fn live_queue(db: &DatabaseConnection) -> StoreResult<LiveQueue> {
    let (pending, running) = live_counts(db).await?;
    Ok(LiveQueue {
        pending,
        running,
        oldest_pending: oldest_pending(db).await?,
    })
}

/// Tasks that finished in one minute, by final state.
#[derive(Debug, Clone, FromQueryResult)]
pub struct MinuteCount {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    pub status: TaskStatus,
    pub n: i64,
}

/// Tasks finished since `since`, counted per minute and final state (one grouped read over the index on
/// `completed_at`).
pub async fn finished_per_minute(
    db: &DatabaseConnection,
    since: DateTime<Utc>,
) -> StoreResult<Vec<MinuteCount>> {
    let minute = if super::is_postgres(db) {
        "CAST(FLOOR(EXTRACT(EPOCH FROM completed_at) / 60) AS BIGINT)"
    } else {
        "CAST(strftime('%s', completed_at) AS INTEGER) / 60"
    };
    let param = if super::is_postgres(db) { "$1" } else { "?" };
    let sql = format!(
        "SELECT {minute} AS minute, status, COUNT(*) AS n FROM tasks \
         WHERE completed_at IS NOT NULL AND completed_at >= {param} GROUP BY 1, 2"
    );
    Ok(
        MinuteCount::find_by_statement(sea_orm::Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [since.into()],
        ))
        .all(db)
        .await?,
    )
}

/// The newest tasks that ended `failed` or `timeout` since `since`, newest first.
pub async fn recent_failures(
    db: &DatabaseConnection,
    since: DateTime<Utc>,
    limit: u64,
) -> StoreResult<Vec<task::Model>> {
    Ok(task::Entity::find()
        .filter(task::Column::CompletedAt.gte(since))
        .filter(task::Column::Status.is_in([TaskStatus::Failed, TaskStatus::Timeout]))
        .order_by_desc(task::Column::CompletedAt)
        .limit(limit)
        .all(db)
        .await?)
}

/// When the oldest pending task was created (through the partial index of pending tasks).
pub async fn oldest_pending(db: &DatabaseConnection) -> StoreResult<Option<DateTime<Utc>>> {
    Ok(task::Entity::find()
        .select_only()
        .column(task::Column::CreatedAt)
        .filter(task::Column::Status.eq(TaskStatus::Pending))
        .order_by_asc(task::Column::CreatedAt)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?)
}

/// How long the base count of finished tasks is reused before it is read again (in the background).
pub const FINISHED_BASE_FRESH: std::time::Duration = std::time::Duration::from_secs(15);
/// How far behind the present the base count stops: later finishes are counted at each call, through the index
/// on `completed_at`. Longer than any transaction, so that no finish commits below it after it was read.
const FINISHED_BASE_LAG: chrono::Duration = chrono::Duration::seconds(30);

#[derive(FromQueryResult)]
struct FinishedCount {
    status: TaskStatus,
    n: i64,
}

/// Finished tasks by state, those that finished up to `upto` (`upto_included`) or after it.
async fn finished_counts(
    db: &DatabaseConnection,
    upto: DateTime<Utc>,
    upto_included: bool,
) -> StoreResult<HashMap<TaskStatus, i64>> {
    let finished: Vec<TaskStatus> = TaskStatus::all().filter(|s| s.is_terminal()).collect();
    let rows = if upto_included {
        task::Entity::find()
            .select_only()
            .column(task::Column::Status)
            .column_as(Expr::col(task::Column::Id).count(), "n")
            .filter(task::Column::Status.is_in(finished.clone()))
            .filter(
                sea_orm::Condition::any()
                    .add(task::Column::CompletedAt.lte(upto))
                    .add(task::Column::CompletedAt.is_null()),
            )
            .group_by(task::Column::Status)
            .into_model::<FinishedCount>()
            .all(db)
            .await?
    } else {
        // Only the time (a task with `completed_at` is finished), and on SQLite `GROUP BY +status`: either a
        // condition on the status or a plain grouping by it leads SQLite's planner to the status index (every
        // finished task) instead of this short range of the index on `completed_at`.
        let sql = if super::is_postgres(db) {
            "SELECT status, COUNT(*) AS n FROM tasks WHERE completed_at > $1 GROUP BY status"
        } else {
            "SELECT status, COUNT(*) AS n FROM tasks WHERE completed_at > ?1 GROUP BY +status"
        };
        FinishedCount::find_by_statement(sea_orm::Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [upto.into()],
        ))
        .all(db)
        .await?
    };
    let mut out: HashMap<TaskStatus, i64> = finished.into_iter().map(|s| (s, 0)).collect();
    for r in rows.into_iter().filter(|r| r.status.is_terminal()) {
        *out.entry(r.status).or_default() += r.n;
    }
    Ok(out)
}

/// Tasks by status for `/health` and the dashboard, exact, at a cost that does not grow with the table:
/// pending and running are counted at each call (their indexes stay small); finished tasks are a base count of
/// those that finished more than 30 s before it was read (most of the table: read at most every 15 s, in the
/// background once known) plus, at each call, those finished since (a short range of the index on
/// `completed_at`). Tasks deleted by retention leave the base count at its next reading.
#[derive(Default)]
pub struct StatusCounts {
    base: tokio::sync::Mutex<Option<Base>>,
    refreshing: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
struct Base {
    read_at: std::time::Instant,
    upto: DateTime<Utc>,
    counts: HashMap<TaskStatus, i64>,
}

impl Base {
    async fn read(db: &DatabaseConnection) -> StoreResult<Base> {
        let upto = super::now() - FINISHED_BASE_LAG;
        Ok(Base {
            read_at: std::time::Instant::now(),
            upto,
            counts: finished_counts(db, upto, true).await?,
        })
    }
}

impl StatusCounts {
    pub async fn get(
        self: &std::sync::Arc<Self>,
        db: &DatabaseConnection,
    ) -> StoreResult<HashMap<TaskStatus, i64>> {
        use std::sync::atomic::Ordering;
        let base = {
            let mut slot = self.base.lock().await;
            match slot.as_ref() {
                Some(b) => {
                    if b.read_at.elapsed() >= FINISHED_BASE_FRESH
                        && !self.refreshing.swap(true, Ordering::AcqRel)
                    {
                        let (me, db) = (self.clone(), db.clone());
                        tokio::spawn(async move {
                            match Base::read(&db).await {
                                Ok(b) => *me.base.lock().await = Some(b),
                                Err(e) => tracing::warn!(error = %e, "cannot count finished tasks"),
                            }
                            me.refreshing.store(false, Ordering::Release);
                        });
                    }
                    b.clone()
                }
                None => {
                    let b = Base::read(db).await?;
                    *slot = Some(b.clone());
                    b
                }
            }
        };
        let (pending, running) = live_counts(db).await?;
        let mut out = base.counts;
        for (s, n) in finished_counts(db, base.upto, false).await? {
            *out.entry(s).or_default() += n;
        }
        out.insert(TaskStatus::Pending, pending as i64);
        out.insert(TaskStatus::Running, running as i64);
        Ok(out)
    }
}
