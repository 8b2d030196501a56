//! What the dashboard's overview reads: tasks finished lately (throughput per minute over the last hour,
//! recent failures). A partial index, so that tasks never finished cost nothing in it.

use sea_orm_migration::prelude::*;

use crate::steps::run_sql;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_sql(
            manager,
            &["CREATE INDEX idx_tasks_completed ON tasks (completed_at) WHERE completed_at IS NOT NULL"],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_sql(manager, &["DROP INDEX idx_tasks_completed"]).await
    }
}
