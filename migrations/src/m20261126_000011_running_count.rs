//! Each worker's count of running tasks, kept by the database itself: `workers.running_tasks`, maintained by
//! triggers on `tasks` at every change that starts or ends a run (status or holder), and at inserts and deletes,
//! whichever statement makes it. A claim reads it from the worker's row as it locks it, so its capacity check
//! (`running_tasks < max_parallel_tasks`) sees every claim committed before it — in the claim's own statement,
//! which on PostgreSQL is then the whole claim (one round trip) — instead of counting the worker's tasks in a
//! statement of its own.

use sea_orm_migration::{prelude::*, sea_orm::DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE workers ADD COLUMN running_tasks integer NOT NULL DEFAULT 0",
        )
        .await?;
        db.execute_unprepared(
            "UPDATE workers SET running_tasks = (SELECT count(*) FROM tasks \
             WHERE tasks.worker_id = workers.id AND tasks.status = 'running')",
        )
        .await?;
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            db.execute_unprepared(
                "CREATE OR REPLACE FUNCTION task_executor_count_running() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN \
                   IF TG_OP <> 'INSERT' THEN \
                     IF OLD.status = 'running' AND OLD.worker_id IS NOT NULL THEN \
                       UPDATE workers SET running_tasks = running_tasks - 1 WHERE id = OLD.worker_id; \
                     END IF; \
                   END IF; \
                   IF TG_OP <> 'DELETE' THEN \
                     IF NEW.status = 'running' AND NEW.worker_id IS NOT NULL THEN \
                       UPDATE workers SET running_tasks = running_tasks + 1 WHERE id = NEW.worker_id; \
                     END IF; \
                   END IF; \
                   RETURN NULL; \
                 END $$",
            )
            .await?;
            db.execute_unprepared(
                "CREATE TRIGGER tasks_count_running_update AFTER UPDATE OF status, worker_id ON tasks \
                 FOR EACH ROW WHEN ((OLD.status = 'running' OR NEW.status = 'running') \
                   AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.worker_id IS DISTINCT FROM NEW.worker_id)) \
                 EXECUTE FUNCTION task_executor_count_running()",
            )
            .await?;
            db.execute_unprepared(
                "CREATE TRIGGER tasks_count_running_insert AFTER INSERT ON tasks \
                 FOR EACH ROW WHEN (NEW.status = 'running') EXECUTE FUNCTION task_executor_count_running()",
            )
            .await?;
            db.execute_unprepared(
                "CREATE TRIGGER tasks_count_running_delete AFTER DELETE ON tasks \
                 FOR EACH ROW WHEN (OLD.status = 'running') EXECUTE FUNCTION task_executor_count_running()",
            )
            .await?;
        } else {
            db.execute_unprepared(
                "CREATE TRIGGER tasks_count_running_update AFTER UPDATE OF status, worker_id ON tasks \
                 FOR EACH ROW WHEN (OLD.status = 'running' OR NEW.status = 'running') \
                   AND (OLD.status IS NOT NEW.status OR OLD.worker_id IS NOT NEW.worker_id) \
                 BEGIN \
                   UPDATE workers SET running_tasks = running_tasks - 1 \
                     WHERE OLD.status = 'running' AND id = OLD.worker_id; \
                   UPDATE workers SET running_tasks = running_tasks + 1 \
                     WHERE NEW.status = 'running' AND id = NEW.worker_id; \
                 END",
            )
            .await?;
            db.execute_unprepared(
                "CREATE TRIGGER tasks_count_running_insert AFTER INSERT ON tasks \
                 FOR EACH ROW WHEN NEW.status = 'running' \
                 BEGIN UPDATE workers SET running_tasks = running_tasks + 1 WHERE id = NEW.worker_id; END",
            )
            .await?;
            db.execute_unprepared(
                "CREATE TRIGGER tasks_count_running_delete AFTER DELETE ON tasks \
                 FOR EACH ROW WHEN OLD.status = 'running' \
                 BEGIN UPDATE workers SET running_tasks = running_tasks - 1 WHERE id = OLD.worker_id; END",
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for t in [
            "tasks_count_running_update",
            "tasks_count_running_insert",
            "tasks_count_running_delete",
        ] {
            let sql = if manager.get_database_backend() == DatabaseBackend::Postgres {
                format!("DROP TRIGGER IF EXISTS {t} ON tasks")
            } else {
                format!("DROP TRIGGER IF EXISTS {t}")
            };
            db.execute_unprepared(&sql).await?;
        }
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            db.execute_unprepared("DROP FUNCTION IF EXISTS task_executor_count_running()")
                .await?;
        }
        db.execute_unprepared("ALTER TABLE workers DROP COLUMN running_tasks")
            .await?;
        Ok(())
    }
}
