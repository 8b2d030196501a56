//! `/api/v1/tasks`: what researchers use.

use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use task_executor_shared::{
    LogLevel, TaskStatus,
    api::{CancelResponse, CreateTaskRequest, LogEntry, Task, TaskSummary},
    params,
};
use uuid::Uuid;

use super::{
    ApiTags,
    body::Checked,
    query::{Limit, LogLimit, Offset, ProblemFilter, WorkerFilter},
};
use crate::auth::{Auth, Read, Submit};
use crate::{
    error::ApiError,
    idempotency::{self, IdempotencyKey},
    state::AppState,
    store::{
        logs,
        tasks::{self, Created, ListFilter, NewTask},
    },
};

pub struct TasksApi {
    pub state: AppState,
}

#[derive(ApiResponse)]
enum CreateResponse {
    /// The task was created.
    #[oai(status = 201)]
    Created(Json<Task>),
    /// A task was already created with this `Idempotency-Key` and the same body: that task.
    #[oai(status = 200)]
    Existing(Json<Task>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Tasks")]
impl TasksApi {
    /// Create a task
    ///
    /// Queues one AIOpsLab problem run. `parameters.max_steps` and `parameters.timeout` (seconds) are filled in
    /// with the server's defaults when absent. With an `Idempotency-Key` header, repeating the same request
    /// returns the task made the first time (200) instead of a second one; the same key with another body is
    /// a 409.
    #[oai(path = "/tasks", method = "post", operation_id = "create_task")]
    async fn create_task(
        &self,
        auth: Auth<Submit>,
        /// A client-chosen key (1-255 visible characters) that makes the creation safe to retry.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: IdempotencyKey,
        body: Json<Checked<CreateTaskRequest>>,
    ) -> Result<CreateResponse, ApiError> {
        let req = body.0.0;
        let parameters = params::effective(&req.parameters, self.state.config.param_defaults())
            .map_err(ApiError::validation)?;
        let idempotency = idempotency_key
            .0
            .map(|k| (k, idempotency::fingerprint(&req)));
        let (task, created) = tasks::create(
            &self.state.db,
            NewTask {
                problem_id: req.problem_id.into_inner(),
                parameters,
                priority: req.priority,
                idempotency,
                created_by: auth.token_name().map(str::to_owned),
                admission: self.state.admission.clone(),
            },
        )
        .await?;
        Ok(match created {
            Created::New => {
                tracing::info!(task_id = %task.id, problem_id = %task.problem_id, "task created");
                self.state.metrics.task_created();
                self.state.dispatcher.created();
                CreateResponse::Created(Json(task.into()))
            }
            Created::Existing => CreateResponse::Existing(Json(task.into())),
        })
    }

    /// List tasks
    ///
    /// Newest first, optionally filtered.
    #[oai(path = "/tasks", method = "get", operation_id = "list_tasks")]
    #[allow(clippy::too_many_arguments)]
    async fn list_tasks(
        &self,
        _auth: Auth<Read>,
        /// Only tasks in this state.
        status: Query<Option<TaskStatus>>,
        /// Only tasks of this problem.
        problem_id: Query<ProblemFilter>,
        /// Only tasks held (or last held) by this worker.
        worker_id: Query<WorkerFilter>,
        /// Only tasks of this batch.
        batch_id: Query<Option<Uuid>>,
        /// Most tasks returned (1-1000).
        limit: Query<Limit>,
        /// Tasks skipped first, for paging.
        offset: Query<Offset>,
    ) -> Result<Json<Vec<TaskSummary>>, ApiError> {
        let filter = ListFilter {
            status: status.0,
            problem_id: problem_id.0.into_inner(),
            worker_id: worker_id.0.into_inner(),
            batch_id: batch_id.0,
            limit: limit.get(),
            offset: offset.get(),
        };
        let rows = tasks::list(&self.state.db, &filter).await?;
        Ok(Json(rows.into_iter().map(Into::into).collect()))
    }

    /// Get a task
    #[oai(path = "/tasks/:task_id", method = "get", operation_id = "get_task")]
    async fn get_task(
        &self,
        _auth: Auth<Read>,
        task_id: Path<Uuid>,
    ) -> Result<Json<Task>, ApiError> {
        Ok(Json(tasks::get(&self.state.db, task_id.0).await?.into()))
    }

    /// Cancel a task
    ///
    /// A pending task is cancelled at once; a running one too, and its worker is told to stop it through its
    /// next heartbeat. A task already finished is a 409.
    #[oai(
        path = "/tasks/:task_id/cancel",
        method = "post",
        operation_id = "cancel_task"
    )]
    async fn cancel_task(
        &self,
        _auth: Auth<Submit>,
        task_id: Path<Uuid>,
    ) -> Result<Json<CancelResponse>, ApiError> {
        let task = crate::service::cancel_task(&self.state, task_id.0).await?;
        Ok(Json(CancelResponse {
            message: "Task cancelled successfully".to_owned(),
            task_id: task.id,
        }))
    }

    /// Get a task's logs
    ///
    /// In time order, state changes of the task and what its runner logged.
    #[oai(
        path = "/tasks/:task_id/logs",
        method = "get",
        operation_id = "get_task_logs"
    )]
    async fn get_task_logs(
        &self,
        _auth: Auth<Read>,
        task_id: Path<Uuid>,
        /// Only entries of this level and more severe.
        level: Query<Option<LogLevel>>,
        /// Most entries returned (1-10000).
        limit: Query<LogLimit>,
        /// Entries skipped first, for paging: ask again with `offset` + `limit` until fewer than `limit`
        /// come back.
        offset: Query<Offset>,
    ) -> Result<Json<Vec<LogEntry>>, ApiError> {
        let rows = logs::list(
            &self.state.db,
            task_id.0,
            level.0,
            limit.get(),
            offset.get(),
        )
        .await?;
        Ok(Json(rows.into_iter().map(Into::into).collect()))
    }
}
