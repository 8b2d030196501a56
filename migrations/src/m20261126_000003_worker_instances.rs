//! The process behind a worker id: a worker that registers says which instance it is, so that a second live
//! process cannot take over an id in use, while a restarted one (the same instance) takes over at once.

use sea_orm_migration::prelude::*;

use crate::steps::{add_column, drop_column};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Workers {
    Table,
    InstanceId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = ColumnDef::new(Workers::InstanceId)
            .string_len(128)
            .null()
            .take();
        add_column(manager, Workers::Table, column).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_column(manager, Workers::Table, Workers::InstanceId).await
    }
}
