//! `/api/v1/workers`: the registry, and the protocol remote workers speak (register, heartbeat, claim,
//! report logs, complete, fail).

use std::time::Duration;

use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use task_executor_shared::{
    WorkerId, WorkerStatus,
    api::{
        ClaimedTask, CompleteTaskRequest, FailTaskRequest, HeartbeatRequest, HeartbeatResponse,
        RegisterWorkerRequest, RegisterWorkerResponse, ReleaseTaskRequest, ReportLogsRequest,
        ReportLogsResponse, Task, Worker,
    },
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{ApiTags, body::Checked};
use crate::auth::{Auth, Read, Work};
use crate::{
    error::ApiError,
    state::AppState,
    store::{
        queue::{Outcome, RunRef},
        workers,
    },
};

pub struct WorkersApi {
    pub state: AppState,
}

#[derive(ApiResponse)]
enum RegisterResponse {
    /// A new worker.
    #[oai(status = 201)]
    Created(Json<RegisterWorkerResponse>),
    /// A known worker came back: capabilities replaced, tasks it still held released.
    #[oai(status = 200)]
    Reregistered(Json<RegisterWorkerResponse>),
}

#[derive(ApiResponse)]
enum ClaimResponse {
    /// The claimed task: `running`, held by this worker, with its `attempt`, `lease_expires_at` and the
    /// `lease_id` every report about this run must carry.
    #[oai(status = 200)]
    Claimed(Json<Box<ClaimedTask>>),
    /// No task available (within `wait_seconds`).
    #[oai(status = 204)]
    NoTask,
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Workers")]
impl WorkersApi {
    /// Register a worker
    ///
    /// A new id is 201. A known id is how a restarted worker comes back: 200, capabilities replaced, and any
    /// task it still held is requeued at once (the process that ran it is gone).
    #[oai(
        path = "/workers/register",
        method = "post",
        operation_id = "register_worker"
    )]
    async fn register_worker(
        &self,
        auth: Auth<Work>,
        body: Json<RegisterWorkerRequest>,
    ) -> Result<RegisterResponse, ApiError> {
        auth.may_act_as(body.0.worker_id.as_str())?;
        let r = self.state.dispatcher.register(&body.0).await?;
        let resp = RegisterWorkerResponse {
            id: r.worker.id,
            backend_type: r.worker.backend_type,
            status: WorkerStatus::Idle,
            registered_at: r.worker.registered_at,
            lease_seconds: self.state.dispatcher.lease.heartbeat_timeout.num_seconds(),
        };
        Ok(if r.created {
            RegisterResponse::Created(Json(resp))
        } else {
            RegisterResponse::Reregistered(Json(resp))
        })
    }

    /// List workers
    ///
    /// Status is derived: `offline` when the worker said so or its heartbeat is older than the timeout,
    /// `busy` while it holds a running task, else `idle`.
    #[oai(path = "/workers", method = "get", operation_id = "list_workers")]
    async fn list_workers(
        &self,
        _auth: Auth<Read>,
        /// Only workers in this state.
        status: Query<Option<WorkerStatus>>,
        /// Only workers of this backend type.
        #[oai(validator(min_length = 1, max_length = 64))]
        backend_type: Query<Option<String>>,
    ) -> Result<Json<Vec<Worker>>, ApiError> {
        let all = workers::list_with_status(
            &self.state.db,
            self.state.dispatcher.lease.heartbeat_timeout,
        )
        .await?;
        Ok(Json(
            all.into_iter()
                .filter(|(w, s, _)| {
                    status.0.is_none_or(|want| want == *s)
                        && backend_type
                            .0
                            .as_deref()
                            .is_none_or(|b| b == w.backend_type)
                })
                .map(|(w, s, held)| workers::to_api(w, s, held))
                .collect(),
        ))
    }

    /// Get a worker
    #[oai(
        path = "/workers/:worker_id",
        method = "get",
        operation_id = "get_worker"
    )]
    async fn get_worker(
        &self,
        _auth: Auth<Read>,
        worker_id: Path<WorkerId>,
    ) -> Result<Json<Worker>, ApiError> {
        let (w, s, held) = workers::one_with_status(
            &self.state.db,
            worker_id.0.as_str(),
            self.state.dispatcher.lease.heartbeat_timeout,
        )
        .await?;
        Ok(Json(workers::to_api(w, s, held)))
    }

    /// Worker heartbeat
    ///
    /// Records the heartbeat and extends the lease of every task the worker reports (`current_task_id`,
    /// `running_task_ids`). `cancel_task_ids` lists the reported tasks the worker must stop (cancelled, timed
    /// out, or no longer its own). A task the worker holds but no longer reports is requeued after a short
    /// grace period: its claim answer was lost on the way.
    #[oai(
        path = "/workers/:worker_id/heartbeat",
        method = "post",
        operation_id = "worker_heartbeat"
    )]
    async fn heartbeat(
        &self,
        auth: Auth<Work>,
        worker_id: Path<WorkerId>,
        body: Json<HeartbeatRequest>,
    ) -> Result<Json<HeartbeatResponse>, ApiError> {
        auth.may_act_as(worker_id.0.as_str())?;
        let out = self
            .state
            .dispatcher
            .heartbeat(worker_id.0.as_str(), &body.0)
            .await?;
        Ok(Json(HeartbeatResponse {
            message: "Heartbeat received".to_owned(),
            timestamp: out.at,
            cancel_task_ids: out.cancel_task_ids,
        }))
    }

    /// Claim a task (for workers)
    ///
    /// The next pending task this worker supports (by `supported_problems`), highest priority first, then
    /// oldest. With `wait_seconds`, waits up to that long for one to arrive (long poll). 409 when the worker
    /// already holds `max_parallel_tasks` running tasks.
    #[oai(
        path = "/workers/:worker_id/claim",
        method = "post",
        operation_id = "claim_task"
    )]
    async fn claim(
        &self,
        auth: Auth<Work>,
        worker_id: Path<WorkerId>,
        /// Seconds to wait for a task when none is available (0-60).
        #[oai(default, validator(minimum(value = "0"), maximum(value = "60")))]
        wait_seconds: Query<u64>,
    ) -> Result<ClaimResponse, ApiError> {
        auth.may_act_as(worker_id.0.as_str())?;
        let claimed = self
            .state
            .dispatcher
            .claim(
                worker_id.0.as_str(),
                Duration::from_secs(wait_seconds.0),
                &CancellationToken::new(),
            )
            .await?;
        Ok(match claimed {
            Some(t) => ClaimResponse::Claimed(Json(Box::new(ClaimedTask {
                lease_id: t.lease_id.expect("a claim sets a lease id"),
                task: t.into(),
            }))),
            None => ClaimResponse::NoTask,
        })
    }

    /// Report log entries of a running task
    ///
    /// Accepted only from the worker holding the task, for the attempt it holds, while it runs.
    #[oai(
        path = "/workers/:worker_id/tasks/:task_id/logs",
        method = "post",
        operation_id = "report_task_logs"
    )]
    async fn report_logs(
        &self,
        auth: Auth<Work>,
        worker_id: Path<WorkerId>,
        task_id: Path<Uuid>,
        body: Json<ReportLogsRequest>,
    ) -> Result<Json<ReportLogsResponse>, ApiError> {
        auth.may_act_as(worker_id.0.as_str())?;
        let accepted = self
            .state
            .dispatcher
            .report_logs(worker_id.0.as_str(), task_id.0, body.0)
            .await?;
        Ok(Json(ReportLogsResponse { accepted }))
    }

    /// Complete a task
    ///
    /// The run finished: the task becomes `completed` with the result as given. Fenced like every report:
    /// 409 `task_not_held`, `stale_attempt`, `task_cancelled`, `task_timed_out` or `task_finished` otherwise,
    /// and the task is left unchanged.
    #[oai(
        path = "/workers/:worker_id/tasks/:task_id/complete",
        method = "post",
        operation_id = "complete_task"
    )]
    async fn complete(
        &self,
        auth: Auth<Work>,
        worker_id: Path<WorkerId>,
        task_id: Path<Uuid>,
        body: Json<CompleteTaskRequest>,
    ) -> Result<Json<Task>, ApiError> {
        auth.may_act_as(worker_id.0.as_str())?;
        let req = body.0;
        let run = RunRef::reported(worker_id.0.as_str(), req.attempt, req.lease_id);
        let t = self
            .state
            .dispatcher
            .finish(task_id.0, run, Outcome::Completed(req.result))
            .await?;
        Ok(Json(t.into()))
    }

    /// Fail a task
    ///
    /// The run did not finish well: the task becomes `failed` (or `timeout` with `status: "timeout"`), the
    /// error kept in its result. Fenced like `complete`.
    #[oai(
        path = "/workers/:worker_id/tasks/:task_id/fail",
        method = "post",
        operation_id = "fail_task"
    )]
    async fn fail(
        &self,
        auth: Auth<Work>,
        worker_id: Path<WorkerId>,
        task_id: Path<Uuid>,
        body: Json<Checked<FailTaskRequest>>,
    ) -> Result<Json<Task>, ApiError> {
        auth.may_act_as(worker_id.0.as_str())?;
        let req = body.0.0;
        let outcome = Outcome::from(&req);
        let run = RunRef::reported(worker_id.0.as_str(), req.attempt, req.lease_id);
        let t = self
            .state
            .dispatcher
            .finish(task_id.0, run, outcome)
            .await?;
        Ok(Json(t.into()))
    }

    /// Release a task (for workers that stop)
    ///
    /// The worker is shutting down and stopped the run: the task goes back to `pending` without using an
    /// attempt. Fenced like `complete`.
    #[oai(
        path = "/workers/:worker_id/tasks/:task_id/release",
        method = "post",
        operation_id = "release_task"
    )]
    async fn release(
        &self,
        auth: Auth<Work>,
        worker_id: Path<WorkerId>,
        task_id: Path<Uuid>,
        body: Json<ReleaseTaskRequest>,
    ) -> Result<Json<Task>, ApiError> {
        auth.may_act_as(worker_id.0.as_str())?;
        let run = RunRef::reported(worker_id.0.as_str(), body.0.attempt, body.0.lease_id);
        let why = body.0.reason.as_ref().map(|r| r.as_str());
        let t = self.state.dispatcher.release(task_id.0, run, why).await?;
        Ok(Json(t.into()))
    }
}
