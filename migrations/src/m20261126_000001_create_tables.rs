//! Tasks, their logs, and workers.

use sea_orm_migration::prelude::*;

use crate::steps::{create_table, drop_table, run_sql, string_key, uuid_key};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
    ProblemId,
    Status,
    Priority,
    Parameters,
    Result,
    WorkerId,
    Attempt,
    LeaseExpiresAt,
    IdempotencyKey,
    RequestHash,
    CreatedAt,
    UpdatedAt,
    StartedAt,
    CompletedAt,
}

#[derive(DeriveIden)]
enum TaskLogs {
    Table,
    Id,
    TaskId,
    Timestamp,
    Level,
    Severity,
    Message,
    Context,
    Attempt,
}

#[derive(DeriveIden)]
enum Workers {
    Table,
    Id,
    BackendType,
    Status,
    MaxParallelTasks,
    SupportedProblems,
    Metadata,
    LastHeartbeat,
    RegisteredAt,
    TasksCompleted,
    TasksFailed,
}

fn tstz(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .take()
}

fn tstz_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().null().take()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_table(
            manager,
            Table::create()
                .table(Tasks::Table)
                .col(uuid_key(Tasks::Id))
                .col(ColumnDef::new(Tasks::ProblemId).string_len(255).not_null())
                .col(ColumnDef::new(Tasks::Status).string_len(16).not_null())
                .col(
                    ColumnDef::new(Tasks::Priority)
                        .integer()
                        .not_null()
                        .default(0),
                )
                .col(ColumnDef::new(Tasks::Parameters).json_binary().not_null())
                .col(ColumnDef::new(Tasks::Result).json_binary().null())
                .col(ColumnDef::new(Tasks::WorkerId).string_len(128).null())
                .col(
                    ColumnDef::new(Tasks::Attempt)
                        .integer()
                        .not_null()
                        .default(0),
                )
                .col(tstz_null(Tasks::LeaseExpiresAt))
                .col(ColumnDef::new(Tasks::IdempotencyKey).string_len(255).null())
                .col(ColumnDef::new(Tasks::RequestHash).string_len(64).null())
                .col(tstz(Tasks::CreatedAt))
                .col(tstz(Tasks::UpdatedAt))
                .col(tstz_null(Tasks::StartedAt))
                .col(tstz_null(Tasks::CompletedAt)),
        )
        .await?;

        // Partial indexes are written as SQL: PostgreSQL and SQLite both accept this form.
        run_sql(
            manager,
            &[
            // The claim query: pending tasks in claim order (priority, then oldest). Partial, so it holds only
            // the queue's pending part and stays small however many finished tasks the table keeps.
            "CREATE INDEX idx_tasks_pending_claim ON tasks (priority DESC, created_at, id) WHERE status = 'pending'",
            // Idempotent creation looks tasks up by the client's key; unique so that two racing creates with one
            // key make one task. NULL keys (most tasks) do not collide.
            "CREATE UNIQUE INDEX idx_tasks_idempotency_key ON tasks (idempotency_key)",
            // Listing newest first, unfiltered.
            "CREATE INDEX idx_tasks_created ON tasks (created_at, id)",
            // Listing filtered by status (also queue counts by status).
            "CREATE INDEX idx_tasks_status_created ON tasks (status, created_at)",
            // Listing filtered by problem.
            "CREATE INDEX idx_tasks_problem_created ON tasks (problem_id, created_at)",
            // Listing filtered by worker, and the tasks a worker holds (heartbeat, claim limit).
            "CREATE INDEX idx_tasks_worker_status ON tasks (worker_id, status)",
            ],
        )
        .await?;

        create_table(
            manager,
            Table::create()
                .table(TaskLogs::Table)
                .col(
                    ColumnDef::new(TaskLogs::Id)
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(ColumnDef::new(TaskLogs::TaskId).uuid().not_null())
                .col(tstz(TaskLogs::Timestamp))
                .col(ColumnDef::new(TaskLogs::Level).string_len(16).not_null())
                .col(
                    ColumnDef::new(TaskLogs::Severity)
                        .small_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(TaskLogs::Message).text().not_null())
                .col(ColumnDef::new(TaskLogs::Context).json_binary().null())
                .col(ColumnDef::new(TaskLogs::Attempt).integer().null())
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_task_logs_task")
                        .from(TaskLogs::Table, TaskLogs::TaskId)
                        .to(Tasks::Table, Tasks::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                ),
        )
        .await?;
        // A task's log in time order (GET /api/v1/tasks/{id}/logs).
        run_sql(
            manager,
            &["CREATE INDEX idx_task_logs_task_time ON task_logs (task_id, timestamp, id)"],
        )
        .await?;

        create_table(
            manager,
            Table::create()
                .table(Workers::Table)
                .col(string_key(Workers::Id, 128))
                .col(
                    ColumnDef::new(Workers::BackendType)
                        .string_len(64)
                        .not_null(),
                )
                .col(ColumnDef::new(Workers::Status).string_len(16).not_null())
                .col(
                    ColumnDef::new(Workers::MaxParallelTasks)
                        .integer()
                        .not_null()
                        .default(1),
                )
                .col(
                    ColumnDef::new(Workers::SupportedProblems)
                        .json_binary()
                        .not_null(),
                )
                .col(ColumnDef::new(Workers::Metadata).json_binary().null())
                .col(tstz(Workers::LastHeartbeat))
                .col(tstz(Workers::RegisteredAt))
                .col(
                    ColumnDef::new(Workers::TasksCompleted)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .col(
                    ColumnDef::new(Workers::TasksFailed)
                        .big_integer()
                        .not_null()
                        .default(0),
                ),
        )
        .await?;
        // The reaper looks for workers whose heartbeat is older than the timeout.
        run_sql(
            manager,
            &["CREATE INDEX idx_workers_heartbeat ON workers (last_heartbeat)"],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_table(manager, Workers::Table).await?;
        drop_table(manager, TaskLogs::Table).await?;
        drop_table(manager, Tasks::Table).await
    }
}
