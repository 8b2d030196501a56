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

/// A text column of up to `len` characters that may be NULL.
pub(crate) fn text_null(column: impl IntoIden, len: u32) -> ColumnDef {
    ColumnDef::new(column).string_len(len).null().take()
}

/// A migration made only of statements sent as they are, up and down: an index, a trigger, a setting.
pub(crate) struct Sql {
    /// The module's `file!()`: its stem names the migration, as `DeriveMigrationName` does.
    pub file: &'static str,
    /// The statements are PostgreSQL's only; SQLite gets none.
    pub postgres_only: bool,
    pub up: &'static [&'static str],
    pub down: &'static [&'static str],
}

impl Sql {
    async fn send(&self, manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
        if self.postgres_only {
            postgres_sql(manager, statements).await
        } else {
            run_sql(manager, statements).await
        }
    }
}

impl MigrationName for Sql {
    fn name(&self) -> &str {
        sea_orm_migration::util::get_file_stem(self.file)
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Sql {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        self.send(manager, self.up).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        self.send(manager, self.down).await
    }
}
