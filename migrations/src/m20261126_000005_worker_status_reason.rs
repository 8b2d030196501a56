//! Why a worker is `degraded` (its runner cannot run problems: a missing program, AIOpsLab not importable, a
//! cluster missing or silent), as its heartbeat says.

use sea_orm_migration::prelude::*;

use crate::steps::{add_column, drop_column};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Workers {
    Table,
    StatusReason,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = ColumnDef::new(Workers::StatusReason).text().null().take();
        add_column(manager, Workers::Table, column).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_column(manager, Workers::Table, Workers::StatusReason).await
    }
}
