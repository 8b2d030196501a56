//! sea-orm entities of the three tables (see the migration for indexes). States and levels are the shared
//! enums, stored as their lowercase names.

pub mod task {
    use sea_orm::entity::prelude::*;
    pub use task_executor_shared::TaskStatus;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "tasks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub problem_id: String,
        pub status: TaskStatus,
        pub priority: i32,
        pub parameters: Json,
        pub result: Option<Json>,
        pub worker_id: Option<String>,
        pub attempt: i32,
        pub lease_expires_at: Option<DateTimeUtc>,
        pub idempotency_key: Option<String>,
        pub request_hash: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub started_at: Option<DateTimeUtc>,
        pub completed_at: Option<DateTimeUtc>,
        /// The fencing token of the current (or last) run: a new one at each claim.
        pub lease_id: Option<Uuid>,
        /// Times the task went back to the queue without counting an attempt.
        pub uncounted_requeues: i32,
        /// Log entries its workers wrote, and those dropped past the cap.
        pub log_entries: i64,
        pub log_dropped: i64,
        /// The name of the API token that created the task.
        pub created_by: Option<String>,
        /// The batch (campaign) the task belongs to.
        pub batch_id: Option<Uuid>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod task_log {
    use sea_orm::entity::prelude::*;
    pub use task_executor_shared::LogLevel;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "task_logs")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub task_id: Uuid,
        pub timestamp: DateTimeUtc,
        pub level: LogLevel,
        pub severity: i16,
        pub message: String,
        pub context: Option<Json>,
        pub attempt: Option<i32>,
        /// The state the task entered, when the entry records a state change.
        pub status: Option<task_executor_shared::TaskStatus>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod worker {
    use sea_orm::entity::prelude::*;
    pub use task_executor_shared::WorkerStatus;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "workers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub backend_type: String,
        pub status: WorkerStatus,
        pub max_parallel_tasks: i32,
        pub supported_problems: Json,
        pub metadata: Option<Json>,
        pub last_heartbeat: DateTimeUtc,
        pub registered_at: DateTimeUtc,
        pub tasks_completed: i64,
        pub tasks_failed: i64,
        /// The process that registered the worker last, when it said.
        pub instance_id: Option<String>,
        /// Why it is `degraded`, as its heartbeat said.
        pub status_reason: Option<String>,
        /// Its tasks in `running`, kept by triggers on `tasks` (migration 11).
        pub running_tasks: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod api_token {
    use sea_orm::entity::prelude::*;
    pub use task_executor_shared::Role;

    /// An API token: its name, role and (for `worker`) pattern, and the SHA-256 of the token (hex), never the
    /// token itself.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub role: Role,
        pub worker_pattern: Option<String>,
        pub token_hash: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod batch {
    use sea_orm::entity::prelude::*;

    /// A campaign: tasks submitted together (`POST /api/v1/batches`).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "batches")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: Option<String>,
        pub created_by: Option<String>,
        pub created_at: DateTimeUtc,
        pub idempotency_key: Option<String>,
        pub request_hash: Option<String>,
        pub task_count: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
