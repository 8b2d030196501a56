//! Campaigns and live updates: batches of tasks (a task may belong to one), and the status a log entry
//! records when it records a state change, so that the log is also the stream of a task's events. Also:
//! idempotency keys become each creator's own.

use sea_orm_migration::prelude::*;

use crate::steps::{
    add_column, create_table, drop_column, drop_table, run_sql, text_null, uuid_key,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Batches {
    Table,
    Id,
    Name,
    CreatedBy,
    CreatedAt,
    IdempotencyKey,
    RequestHash,
    TaskCount,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    BatchId,
}

#[derive(DeriveIden)]
enum TaskLogs {
    Table,
    Status,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_table(
            manager,
            Table::create()
                .table(Batches::Table)
                .col(uuid_key(Batches::Id))
                .col(ColumnDef::new(Batches::Name).string_len(255).null())
                .col(ColumnDef::new(Batches::CreatedBy).string_len(64).null())
                .col(
                    ColumnDef::new(Batches::CreatedAt)
                        .timestamp_with_time_zone()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(Batches::IdempotencyKey)
                        .string_len(255)
                        .null(),
                )
                .col(ColumnDef::new(Batches::RequestHash).string_len(64).null())
                .col(ColumnDef::new(Batches::TaskCount).integer().not_null()),
        )
        .await?;
        add_column(
            manager,
            Tasks::Table,
            ColumnDef::new(Tasks::BatchId).uuid().null(),
        )
        .await?;
        add_column(manager, TaskLogs::Table, text_null(TaskLogs::Status, 16)).await?;
        run_sql(
            manager,
            &[
            // Idempotency keys are each token's own (a key another token used is not a conflict, and does
            // not reveal what that token made); NULL keys do not collide.
            "DROP INDEX idx_tasks_idempotency_key",
            "CREATE UNIQUE INDEX idx_tasks_idempotency_key ON tasks ((COALESCE(created_by, '')), idempotency_key)",
            "CREATE UNIQUE INDEX idx_batches_idempotency_key ON batches ((COALESCE(created_by, '')), idempotency_key)",
            // A batch's tasks (progress counts by status, results, the filter of GET /tasks).
            "CREATE INDEX idx_tasks_batch_status ON tasks (batch_id, status) WHERE batch_id IS NOT NULL",
            // A task's stream of events: its entries after a position, in order.
            "CREATE INDEX idx_task_logs_task_id ON task_logs (task_id, id)",
            // The stream of every task's state changes (GET /api/v1/events), in order.
            "CREATE INDEX idx_task_logs_status_events ON task_logs (id) WHERE status IS NOT NULL",
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_sql(
            manager,
            &[
                "DROP INDEX idx_tasks_idempotency_key",
                "CREATE UNIQUE INDEX idx_tasks_idempotency_key ON tasks (idempotency_key)",
                "DROP INDEX idx_task_logs_status_events",
                "DROP INDEX idx_task_logs_task_id",
                "DROP INDEX idx_tasks_batch_status",
            ],
        )
        .await?;
        drop_column(manager, TaskLogs::Table, TaskLogs::Status).await?;
        drop_column(manager, Tasks::Table, Tasks::BatchId).await?;
        drop_table(manager, Batches::Table).await
    }
}
