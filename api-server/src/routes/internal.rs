//! `/api/v1/workers/internal/*`: the workers inside this API server process.

use poem_openapi::{Object, OpenApi, param::Query, payload::Json};
use task_executor_shared::WorkerStatus;
use uuid::Uuid;

use super::ApiTags;
use crate::auth::{Admin, Auth, Read};
use crate::{error::ApiError, state::AppState, supervisor::SupervisorError};

pub struct InternalWorkersApi {
    pub state: AppState,
}

#[derive(Object)]
struct InternalWorkerView {
    id: String,
    /// `idle`, `busy`, or `stopping` (finishing its task before it goes).
    status: WorkerStatus,
    #[oai(nullable)]
    current_task: Option<Uuid>,
}

#[derive(Object)]
struct InternalStatus {
    /// Whether internal workers are active (not stopped).
    running: bool,
    /// Active workers (not counting those stopping).
    num_workers: u64,
    workers: Vec<InternalWorkerView>,
}

#[derive(Object)]
struct ScaleRequest {
    /// The number of internal workers wanted (0-64).
    #[oai(validator(minimum(value = "0"), maximum(value = "64")))]
    num_workers: u32,
}

#[derive(Object)]
struct ScaleResponse {
    message: String,
    previous_count: u64,
    new_count: u64,
}

#[derive(Object)]
struct StopResponse {
    message: String,
    stopped_count: u64,
}

#[derive(Object)]
struct StartResponse {
    message: String,
    worker_count: u64,
}

#[OpenApi(prefix_path = "/api/v1/workers/internal", tag = "ApiTags::Workers")]
impl InternalWorkersApi {
    /// Get internal workers status
    #[oai(
        path = "/status",
        method = "get",
        operation_id = "internal_workers_status"
    )]
    async fn status(&self, _auth: Auth<Read>) -> Result<Json<InternalStatus>, ApiError> {
        let (running, workers) = self.state.supervisor.status();
        let num_workers = workers
            .iter()
            .filter(|w| w.status != WorkerStatus::Stopping)
            .count() as u64;
        Ok(Json(InternalStatus {
            running,
            num_workers,
            workers: workers
                .into_iter()
                .map(|w| InternalWorkerView {
                    id: w.id,
                    status: w.status,
                    current_task: w.current_task,
                })
                .collect(),
        }))
    }

    /// Scale internal workers
    ///
    /// New workers start at once. When scaling down, idle workers stop at once and busy ones finish their
    /// current task first (`stopping` meanwhile): no work is lost.
    #[oai(
        path = "/scale",
        method = "post",
        operation_id = "scale_internal_workers"
    )]
    async fn scale(
        &self,
        _auth: Auth<Admin>,
        body: Json<ScaleRequest>,
    ) -> Result<Json<ScaleResponse>, ApiError> {
        let n = body.0.num_workers as usize;
        let previous = self.state.supervisor.scale(n).await;
        Ok(Json(ScaleResponse {
            message: "Workers scaled successfully".to_owned(),
            previous_count: previous as u64,
            new_count: n as u64,
        }))
    }

    /// Stop internal workers
    ///
    /// No new claims from now on. Running tasks are stopped and put back to `pending` without using up an
    /// attempt (a later start picks them up); with `drain=true` they finish instead.
    #[oai(
        path = "/stop",
        method = "post",
        operation_id = "stop_internal_workers"
    )]
    async fn stop(
        &self,
        _auth: Auth<Admin>,
        /// Let running tasks finish instead of stopping them.
        #[oai(default)]
        drain: Query<bool>,
    ) -> Result<Json<StopResponse>, ApiError> {
        let stopped = self.state.supervisor.stop(drain.0).await;
        Ok(Json(StopResponse {
            message: if drain.0 {
                "Workers draining"
            } else {
                "Workers stopped"
            }
            .to_owned(),
            stopped_count: stopped as u64,
        }))
    }

    /// Start internal workers
    ///
    /// Starts the configured number of workers (or the last scale's). 409 when workers are running. During a
    /// stop it waits until the stopped workers are gone.
    #[oai(
        path = "/start",
        method = "post",
        operation_id = "start_internal_workers"
    )]
    async fn start(&self, _auth: Auth<Admin>) -> Result<Json<StartResponse>, ApiError> {
        match self.state.supervisor.start().await {
            Ok(n) => Ok(Json(StartResponse {
                message: "Workers started".to_owned(),
                worker_count: n as u64,
            })),
            Err(e @ SupervisorError::AlreadyRunning(_)) => {
                Err(ApiError::conflict("workers_already_running", e.to_string()))
            }
        }
    }
}
