//! Authentication: the API tokens (only their SHA-256, never the token itself), and who created each task
//! (the token's name), so that a cap on one token's active tasks can be counted.

use sea_orm_migration::prelude::*;

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
        manager
            .create_table(
                Table::create()
                    .table(ApiTokens::Table)
                    .col(
                        ColumnDef::new(ApiTokens::Name)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
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
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(ColumnDef::new(Tasks::CreatedBy).string_len(64).null())
                    .to_owned(),
            )
            .await?;
        // The active tasks of one token (MAX_ACTIVE_TASKS_PER_TOKEN), counted at each create.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_tasks_created_by_active ON tasks (created_by, status) \
                 WHERE created_by IS NOT NULL AND status IN ('pending', 'running')",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX idx_tasks_created_by_active")
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .drop_column(Tasks::CreatedBy)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(ApiTokens::Table).to_owned())
            .await
    }
}
