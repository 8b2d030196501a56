//! Authentication: the API tokens (only their SHA-256, never the token itself), and who created each task
//! (the token's name), so that a cap on one token's active tasks can be counted.

use sea_orm_migration::prelude::*;

use crate::steps::{
    add_column, create_table, drop_column, drop_table, run_sql, string_key, text_null,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Name,
    Role,
    WorkerPattern,
    TokenHash,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    CreatedBy,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_table(
            manager,
            Table::create()
                .table(ApiTokens::Table)
                .col(string_key(ApiTokens::Name, 64))
                .col(ColumnDef::new(ApiTokens::Role).string_len(16).not_null())
                .col(
                    ColumnDef::new(ApiTokens::WorkerPattern)
                        .string_len(128)
                        .null(),
                )
                .col(
                    ColumnDef::new(ApiTokens::TokenHash)
                        .string_len(64)
                        .not_null()
                        .unique_key(),
                )
                .col(
                    ColumnDef::new(ApiTokens::CreatedAt)
                        .timestamp_with_time_zone()
                        .not_null(),
                ),
        )
        .await?;
        add_column(manager, Tasks::Table, text_null(Tasks::CreatedBy, 64)).await?;
        // The active tasks of one token (MAX_ACTIVE_TASKS_PER_TOKEN), counted at each create.
        run_sql(
            manager,
            &[
                "CREATE INDEX idx_tasks_created_by_active ON tasks (created_by, status) \
               WHERE created_by IS NOT NULL AND status IN ('pending', 'running')",
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_sql(manager, &["DROP INDEX idx_tasks_created_by_active"]).await?;
        drop_column(manager, Tasks::Table, Tasks::CreatedBy).await?;
        drop_table(manager, ApiTokens::Table).await
    }
}
