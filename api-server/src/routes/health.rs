//! `/health` and `/ready`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    payload::{Json, PlainText},
};
use task_executor_shared::{Role, TaskStatus, WorkerStatus, api::Identity};

use super::ApiTags;
use crate::{
    auth::{AnyToken, Anyone, Auth, Read},
    error::ApiError,
    state::AppState,
    store::{self, workers},
};

pub struct HealthApi {
    pub state: AppState,
}

#[derive(Object)]
struct DatabaseHealth {
    connected: bool,
    /// Round trip of a trivial query; absent when the database does not answer.
    #[oai(nullable)]
    latency_ms: Option<f64>,
}

#[derive(Object, Default)]
struct WorkerCounts {
    total: i64,
    idle: i64,
    busy: i64,
    offline: i64,
    stopping: i64,
    /// Workers whose runner cannot run problems now (see `status_reason` in `GET /api/v1/workers`).
    degraded: i64,
}

#[derive(Object, Default)]
struct QueueCounts {
    pending: i64,
    running: i64,
    completed: i64,
    failed: i64,
    timeout: i64,
    cancelled: i64,
}

/// The server's health. With authentication on, the details (`database`, `workers`, `queue`) are only given
/// to a token that may read.
#[derive(Object)]
struct Health {
    /// `healthy`, or `unhealthy` when the database does not answer.
    status: String,
    version: String,
    timestamp: DateTime<Utc>,
    #[oai(skip_serializing_if_is_none)]
    database: Option<DatabaseHealth>,
    #[oai(skip_serializing_if_is_none)]
    workers: Option<WorkerCounts>,
    #[oai(skip_serializing_if_is_none)]
    queue: Option<QueueCounts>,
}

#[derive(ApiResponse)]
enum HealthResponse {
    /// The service and its database answer.
    #[oai(status = 200)]
    Healthy(Json<Health>),
    /// The database does not answer.
    #[oai(status = 503)]
    Unhealthy(Json<Health>),
}

#[derive(Object)]
struct Readiness {
    ready: bool,
    /// The database answers.
    database: bool,
    /// At least one worker (internal or remote) is online.
    workers: bool,
}

#[derive(ApiResponse)]
enum ReadyResponse {
    /// Ready to accept requests.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Not ready: the database does not answer.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

const PING_TIMEOUT: Duration = Duration::from_secs(3);

impl HealthApi {
    fn heartbeat_timeout(&self) -> chrono::Duration {
        self.state.dispatcher.lease.heartbeat_timeout
    }

    async fn ping(&self) -> Option<f64> {
        let start = Instant::now();
        match tokio::time::timeout(PING_TIMEOUT, self.state.db.ping()).await {
            Ok(Ok(())) => Some(start.elapsed().as_secs_f64() * 1000.0),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "database ping failed");
                None
            }
            Err(_) => {
                tracing::warn!("database ping timed out");
                None
            }
        }
    }

    async fn counts(&self) -> Result<(WorkerCounts, QueueCounts), store::StoreError> {
        let mut w = WorkerCounts::default();
        for (_, status, _) in
            workers::list_with_status(&self.state.db, self.heartbeat_timeout()).await?
        {
            w.total += 1;
            match status {
                WorkerStatus::Idle => w.idle += 1,
                WorkerStatus::Busy => w.busy += 1,
                WorkerStatus::Offline => w.offline += 1,
                WorkerStatus::Stopping => w.stopping += 1,
                WorkerStatus::Degraded => w.degraded += 1,
            }
        }
        let c = self.state.counts.get(&self.state.db).await?;
        let q = QueueCounts {
            pending: c[&TaskStatus::Pending],
            running: c[&TaskStatus::Running],
            completed: c[&TaskStatus::Completed],
            failed: c[&TaskStatus::Failed],
            timeout: c[&TaskStatus::Timeout],
            cancelled: c[&TaskStatus::Cancelled],
        };
        Ok((w, q))
    }
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Prometheus metrics
    ///
    /// Tasks created, claimed, finished by status, requeued by reason; queue depth and the age of the oldest
    /// pending task; claim wait and run duration; workers by status; HTTP requests by route template; the
    /// database pool. Prometheus text format.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self, _auth: Auth<Read>) -> Result<PlainText<String>, ApiError> {
        Ok(PlainText(
            self.state
                .metrics
                .render(&self.state.db, self.heartbeat_timeout())
                .await,
        ))
    }

    /// Health check
    ///
    /// Database connectivity and latency, workers by status, tasks by status. Open to all; with
    /// authentication on, only a token that may read gets more than `status`, `version` and `timestamp`.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self, auth: Auth<Anyone>) -> HealthResponse {
        let latency = self.ping().await;
        if auth.require(Role::Read).is_err() {
            let body = Health {
                status: if latency.is_some() {
                    "healthy"
                } else {
                    "unhealthy"
                }
                .to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                timestamp: store::now(),
                database: None,
                workers: None,
                queue: None,
            };
            return if latency.is_some() {
                HealthResponse::Healthy(Json(body))
            } else {
                HealthResponse::Unhealthy(Json(body))
            };
        }
        let counts = match latency {
            Some(_) => self
                .counts()
                .await
                .map_err(|e| tracing::warn!(error = %e, "health counts failed"))
                .ok(),
            None => None,
        };
        let healthy = counts.is_some();
        let (workers, queue) = counts.unwrap_or_default();
        let body = Health {
            status: if healthy { "healthy" } else { "unhealthy" }.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            timestamp: store::now(),
            database: Some(DatabaseHealth {
                connected: latency.is_some(),
                latency_ms: latency,
            }),
            workers: Some(workers),
            queue: Some(queue),
        };
        if healthy {
            HealthResponse::Healthy(Json(body))
        } else {
            HealthResponse::Unhealthy(Json(body))
        }
    }

    /// Who am I
    ///
    /// The caller's token as the server sees it: name, role and (for a worker token) the worker ids it may
    /// act as; `auth_enabled: false` when the server asks for no token. A quick way to check a token.
    #[oai(path = "/api/v1/auth/whoami", method = "get", operation_id = "whoami")]
    async fn whoami(&self, auth: Auth<AnyToken>) -> Result<Json<Identity>, ApiError> {
        Ok(Json(auth.identity()))
    }

    /// Readiness check
    ///
    /// 200 when the service can serve requests (its database answers), else 503.
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self) -> ReadyResponse {
        let database = self.ping().await.is_some();
        let workers = database
            && workers::list_with_status(&self.state.db, self.heartbeat_timeout())
                .await
                .map(|ws| ws.iter().any(|(_, s, _)| *s != WorkerStatus::Offline))
                .unwrap_or(false);
        let body = Readiness {
            ready: database,
            database,
            workers,
        };
        if database {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::NotReady(Json(body))
        }
    }
}
