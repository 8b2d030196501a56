//! The steps the migrations share. Each sends the statement it always sent: a migration that has landed keeps
//! doing exactly what it did.

use sea_orm_migration::{prelude::*, sea_orm::DatabaseBackend};

/// Whether the database is PostgreSQL (triggers and storage settings are PostgreSQL's only).
pub(crate) fn is_postgres(manager: &SchemaManager<'_>) -> bool {
    manager.get_database_backend() == DatabaseBackend::Postgres
}

/// Statements sent as they are: partial indexes, triggers, what sea-query does not build. PostgreSQL and
/// SQLite both take the forms the migrations use.
pub(crate) async fn run_sql(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for sql in statements {
        db.execute_unprepared(sql).await?;
    }
    Ok(())
}

/// Adds one column: one per statement, since SQLite alters one column at a time.
pub(crate) async fn add_column(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    column: impl IntoColumnDef,
) -> Result<(), DbErr> {
    manager
        .alter_table(Table::alter().table(table).add_column(column).to_owned())
        .await
}

/// Drops one column.
pub(crate) async fn drop_column(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    column: impl IntoIden,
) -> Result<(), DbErr> {
    manager
        .alter_table(Table::alter().table(table).drop_column(column).to_owned())
        .await
}

/// Drops one table.
pub(crate) async fn drop_table(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
) -> Result<(), DbErr> {
    manager
        .drop_table(Table::drop().table(table).to_owned())
        .await
}

/// Statements sent on PostgreSQL only: triggers, storage settings, its own constraints.
pub(crate) async fn postgres_sql(
    manager: &SchemaManager<'_>,
    statements: &[&str],
) -> Result<(), DbErr> {
    if !is_postgres(manager) {
        return Ok(());
    }
    run_sql(manager, statements).await
}

/// Creates one table.
pub(crate) async fn create_table(
    manager: &SchemaManager<'_>,
    table: &mut TableCreateStatement,
) -> Result<(), DbErr> {
    manager.create_table(table.to_owned()).await
}

/// A UUID primary key.
pub(crate) fn uuid_key(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column)
        .uuid()
        .not_null()
        .primary_key()
        .take()
}

/// A primary key of text up to `len` characters.
pub(crate) fn string_key(column: impl IntoIden, len: u32) -> ColumnDef {
    ColumnDef::new(column)
        .string_len(len)
        .not_null()
        .primary_key()
        .take()
}
