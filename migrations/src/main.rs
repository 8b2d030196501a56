//! `migrate`: apply, roll back or inspect the schema migrations (`migrate --help`).

#[tokio::main]
async fn main() {
    sea_orm_migration::cli::run_cli(migration::Migrator).await;
}
