//! Campaigns: `/api/v1/batches` (create many tasks at once, follow their progress, cancel, export results),
//! the export of any task filter (`/api/v1/tasks/export`), statistics (`/api/v1/stats`) and the leaderboard
//! (`/api/v1/stats/matrix`).

use poem::Body;
use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Path, Query},
    payload::Json,
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry},
};
use serde_json::Value;
use task_executor_shared::{
    TaskStatus,
    api::{Batch, BatchTask, CancelBatchResponse, CreateBatchRequest, CreatedBatch, JsonObject},
    params,
};
use uuid::Uuid;

use super::{
    ApiTags,
    body::Checked,
    query::{Limit, Offset, ProblemFilter, WorkerFilter},
};
use crate::{
    auth::{Auth, Read, Submit},
    error::{self, ApiError},
    idempotency::{self, IdempotencyKey},
    leaderboard::{self, Cols, Matrix, Rows},
    results::{self, Format, GroupBy, Stats},
    state::AppState,
    store::{
        batches::{self, NewBatch, NewBatchTask},
        tasks::{Created, ListFilter},
    },
};

pub struct BatchesApi {
    pub state: AppState,
}

/// Tasks in one batch at most.
pub const MAX_BATCH_TASKS: usize = 10_000;

#[derive(ApiResponse)]
enum CreateBatchResponse {
    /// The batch and all its tasks were created.
    #[oai(status = 201)]
    Created(Json<CreatedBatch>),
    /// The same request with the same `Idempotency-Key` made this batch before.
    #[oai(status = 200)]
    Existing(Json<CreatedBatch>),
}

/// Rows of tasks in the format asked for: one 200 answer with three media types (poem-openapi's derive would
/// declare only one of them).
struct ExportResponse {
    format: Format,
    body: Body,
}

impl ExportResponse {
    fn content_type(format: Format) -> &'static str {
        match format {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Jsonl => "application/x-ndjson",
            Format::Json => "application/json",
        }
    }
}

impl poem::IntoResponse for ExportResponse {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type(Self::content_type(self.format))
            .body(self.body)
    }
}

impl ApiResponse for ExportResponse {
    fn meta() -> MetaResponses {
        // Text, not `binary`: generated clients then hand back the body as a string whatever the format.
        let text = || MetaSchemaRef::Inline(Box::new(MetaSchema::new("string")));
        MetaResponses {
            responses: vec![MetaResponse {
                description: "One row per task, oldest first, as `format` says: `text/csv` (a header line, then \
                              the rows, RFC 4180; AIOpsLab's metrics follow the fixed columns as \
                              `metrics.<name>`), `application/x-ndjson` (a JSON object per line) or \
                              `application/json` (an array of them).",
                status: Some(200),
                status_range: None,
                content: vec![
                    MetaMediaType {
                        content_type: "text/csv",
                        schema: text(),
                    },
                    MetaMediaType {
                        content_type: "application/x-ndjson",
                        schema: text(),
                    },
                    MetaMediaType {
                        content_type: "application/json",
                        schema: MetaSchemaRef::Inline(Box::new(MetaSchema {
                            items: Some(Box::new(MetaSchemaRef::Inline(Box::new(
                                MetaSchema::new("object"),
                            )))),
                            ..MetaSchema::new("array")
                        })),
                    },
                ],
                headers: vec![],
            }],
        }
    }

    fn register(_registry: &mut Registry) {}
}

/// A leaderboard: JSON, or CSV when asked with `format=csv`.
enum MatrixResponse {
    Json(Matrix),
    Csv(String),
}

impl poem::IntoResponse for MatrixResponse {
    fn into_response(self) -> poem::Response {
        match self {
            MatrixResponse::Json(m) => Json(m).into_response(),
            MatrixResponse::Csv(text) => poem::Response::builder()
                .content_type("text/csv; charset=utf-8")
                .body(text),
        }
    }
}

impl ApiResponse for MatrixResponse {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "The matrix (`format=json`), or as `text/csv` (`format=csv`): a header line (the row \
                              and column dimensions, runs, successes, success_rate, ci95_low, ci95_high, \
                              infrastructure_failures, cancelled, the mean and median of TTD, TTL, TTA and TTM, \
                              mean_tokens), then a line per cell (RFC 4180).",
                status: Some(200),
                status_range: None,
                content: vec![
                    MetaMediaType {
                        content_type: "application/json",
                        schema: <Matrix as poem_openapi::types::Type>::schema_ref(),
                    },
                    MetaMediaType {
                        content_type: "text/csv",
                        schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new("string"))),
                    },
                ],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        <Matrix as poem_openapi::types::Type>::register(registry);
    }
}

/// The leaderboard's formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
enum MatrixFormat {
    Json,
    Csv,
}

fn default_matrix_format() -> MatrixFormat {
    MatrixFormat::Json
}

fn default_rows() -> Rows {
    Rows::Agent
}

fn default_cols() -> Cols {
    Cols::ProblemId
}

/// A batch id from a path: one that is not a UUID names no batch (404, like an unknown one).
fn batch_uuid(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s)
        .map_err(|_| ApiError::not_found("batch_not_found", format!("batch {s} not found")))
}

fn default_format() -> Format {
    Format::Csv
}

fn default_group_by() -> GroupBy {
    GroupBy::ProblemId
}

/// The tasks a batch request describes, in order, or why it is refused.
fn expand(req: &CreateBatchRequest) -> Result<Vec<BatchTask>, String> {
    let m = match req {
        CreateBatchRequest::Tasks(b) => return Ok(b.tasks.clone()),
        CreateBatchRequest::Matrix(m) => m,
    };
    let configs: Vec<Option<&JsonObject>> = match &m.agent_configs {
        Some(c) if !c.is_empty() => c.iter().map(Some).collect(),
        _ => vec![None],
    };
    let reps = m.repetitions.unwrap_or(1) as usize;
    let total = m.problems.len() * configs.len() * reps;
    if total > MAX_BATCH_TASKS {
        return Err(format!(
            "the matrix expands to {total} tasks; a batch holds at most {MAX_BATCH_TASKS}"
        ));
    }
    let base = m.parameters.clone().unwrap_or_default();
    let mut out = Vec::with_capacity(total);
    for p in &m.problems {
        for c in &configs {
            for r in 1..=reps {
                let mut parameters = base.clone();
                if let Some(c) = c {
                    parameters.insert(
                        "agent_config".to_owned(),
                        Value::Object(c.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
                    );
                }
                parameters.insert("repetition".to_owned(), Value::from(r as u64));
                out.push(BatchTask {
                    problem_id: p.clone(),
                    parameters,
                    priority: m.priority.unwrap_or(0),
                });
            }
        }
    }
    Ok(out)
}

impl BatchesApi {
    async fn export(&self, filter: ListFilter, format: Format) -> Result<ExportResponse, ApiError> {
        let stream = results::export(self.state.db.clone(), filter, format).await?;
        Ok(ExportResponse {
            format,
            body: Body::from_bytes_stream(stream),
        })
    }

    async fn batch(&self, id: Uuid) -> Result<Batch, ApiError> {
        let b = batches::get(&self.state.db, id).await?;
        let mut p = batches::progress(&self.state.db, &[id]).await?;
        Ok(batches::to_api(b, p.remove(&id).unwrap_or_default()))
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Tasks")]
impl BatchesApi {
    /// Create a batch
    ///
    /// A campaign of 1-10,000 tasks, created together in one transaction or not at all: `tasks` one by one,
    /// or a matrix `problems` × `agent_configs` × `repetitions` that the server expands (each task's
    /// parameters: `parameters`, with its `agent_config` and its `repetition` number). Each task's parameters
    /// are checked as for one task; an invalid one refuses the whole batch, naming it (`tasks[3]`). With an
    /// `Idempotency-Key`, repeating the request returns the batch made the first time (200).
    #[oai(path = "/batches", method = "post", operation_id = "create_batch")]
    async fn create_batch(
        &self,
        auth: Auth<Submit>,
        /// A client-chosen key (1-255 visible characters) that makes the creation safe to retry.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: IdempotencyKey,
        body: Json<Checked<CreateBatchRequest>>,
    ) -> Result<CreateBatchResponse, ApiError> {
        let req = body.0.0;
        // Larger than a batch may be: the request describes more than the server takes at once (a JSON
        // Schema cannot bound the product of three sizes, so it is not a validation error of the body).
        let specs = expand(&req)
            .map_err(|e| ApiError::PayloadTooLarge(error::body("batch_too_large", e)))?;
        let defaults = self.state.config.param_defaults();
        let mut tasks = Vec::with_capacity(specs.len());
        // A matrix's tasks share its `parameters`: an error there is the matrix's, not one task's.
        let matrix = matches!(req, CreateBatchRequest::Matrix(_));
        for (i, t) in specs.into_iter().enumerate() {
            let parameters = params::effective(&t.parameters, defaults).map_err(|e| {
                ApiError::validation(if matrix { e } else { format!("tasks[{i}].{e}") })
            })?;
            tasks.push(NewBatchTask {
                problem_id: t.problem_id.into_inner(),
                parameters,
                priority: t.priority,
            });
        }
        let idempotency = idempotency_key
            .0
            .map(|k| (k, idempotency::fingerprint_of(&req)));
        let (b, ids, created) = batches::create(
            &self.state.db,
            NewBatch {
                name: match &req {
                    CreateBatchRequest::Tasks(b) => b.name.clone(),
                    CreateBatchRequest::Matrix(m) => m.name.clone(),
                }
                .map(|n| n.into_inner()),
                created_by: auth.token_name().map(str::to_owned),
                idempotency,
                tasks,
                admission: self.state.admission.clone(),
            },
        )
        .await?;
        let out = CreatedBatch {
            id: b.id,
            name: b.name,
            task_count: ids.len() as i64,
            task_ids: ids,
            created_at: b.created_at,
        };
        Ok(match created {
            Created::New => {
                tracing::info!(batch_id = %out.id, tasks = out.task_count, "batch created");
                for _ in 0..out.task_count {
                    self.state.metrics.task_created();
                }
                self.state.dispatcher.created();
                CreateBatchResponse::Created(Json(out))
            }
            Created::Existing => CreateBatchResponse::Existing(Json(out)),
        })
    }

    /// List batches
    ///
    /// Newest first, each with its progress.
    #[oai(path = "/batches", method = "get", operation_id = "list_batches")]
    async fn list_batches(
        &self,
        _auth: Auth<Read>,
        /// Most batches returned (1-1000).
        limit: Query<Limit>,
        /// Batches skipped first, for paging.
        offset: Query<Offset>,
    ) -> Result<Json<Vec<Batch>>, ApiError> {
        let list = batches::list(&self.state.db, limit.get(), offset.get()).await?;
        let ids: Vec<Uuid> = list.iter().map(|b| b.id).collect();
        let mut progress = batches::progress(&self.state.db, &ids).await?;
        Ok(Json(
            list.into_iter()
                .map(|b| {
                    let p = progress.remove(&b.id).unwrap_or_default();
                    batches::to_api(b, p)
                })
                .collect(),
        ))
    }

    /// Get a batch
    ///
    /// Its tasks by status, progress, success rate so far, when it started and finished.
    #[oai(
        path = "/batches/:batch_id",
        method = "get",
        operation_id = "get_batch"
    )]
    async fn get_batch(
        &self,
        _auth: Auth<Read>,
        /// The batch's id (an unknown or malformed one is a 404).
        #[oai(validator(max_length = 64))]
        batch_id: Path<String>,
    ) -> Result<Json<Batch>, ApiError> {
        Ok(Json(self.batch(batch_uuid(&batch_id.0)?).await?))
    }

    /// Cancel a batch
    ///
    /// Cancels every task of the batch that is pending or running (finished ones keep their outcome).
    #[oai(
        path = "/batches/:batch_id/cancel",
        method = "post",
        operation_id = "cancel_batch"
    )]
    async fn cancel_batch(
        &self,
        _auth: Auth<Submit>,
        /// The batch's id (an unknown or malformed one is a 404).
        #[oai(validator(max_length = 64))]
        batch_id: Path<String>,
    ) -> Result<Json<CancelBatchResponse>, ApiError> {
        let id = batch_uuid(&batch_id.0)?;
        let cancelled = crate::service::cancel_batch(&self.state, id).await?;
        Ok(Json(CancelBatchResponse { id, cancelled }))
    }

    /// Export a batch's results
    ///
    /// One row per task (in the order given): problem, family and task type, agent and model, repetition,
    /// status, attempt, success, duration, steps, tokens, error, times, and AIOpsLab's metrics (`TTD`, `TTL`,
    /// `TTA`, `TTM`, accuracies, …) flattened into columns. Streamed: any size.
    #[oai(
        path = "/batches/:batch_id/results",
        method = "get",
        operation_id = "batch_results"
    )]
    async fn batch_results(
        &self,
        _auth: Auth<Read>,
        /// The batch's id (an unknown or malformed one is a 404).
        #[oai(validator(max_length = 64))]
        batch_id: Path<String>,
        /// `csv` (default), `jsonl` or `json`.
        #[oai(default = "default_format")]
        format: Query<Format>,
    ) -> Result<ExportResponse, ApiError> {
        let id = batch_uuid(&batch_id.0)?;
        batches::get(&self.state.db, id).await?;
        let filter = ListFilter {
            batch_id: Some(id),
            ..Default::default()
        };
        self.export(filter, format.0).await
    }

    /// Export tasks' results
    ///
    /// The rows of `GET /api/v1/batches/{id}/results` for any filter of tasks, oldest first. Streamed.
    #[oai(path = "/tasks/export", method = "get", operation_id = "export_tasks")]
    #[allow(clippy::too_many_arguments)]
    async fn export_tasks(
        &self,
        _auth: Auth<Read>,
        /// `csv` (default), `jsonl` or `json`.
        #[oai(default = "default_format")]
        format: Query<Format>,
        /// Only tasks in this state.
        status: Query<Option<TaskStatus>>,
        /// Only tasks of this problem.
        problem_id: Query<ProblemFilter>,
        /// Only tasks held (or last held) by this worker.
        worker_id: Query<WorkerFilter>,
        /// Only tasks of this batch.
        batch_id: Query<Option<Uuid>>,
    ) -> Result<ExportResponse, ApiError> {
        let filter = ListFilter {
            status: status.0,
            problem_id: problem_id.0.into_inner(),
            worker_id: worker_id.0.into_inner(),
            batch_id: batch_id.0,
            ..Default::default()
        };
        self.export(filter, format.0).await
    }

    /// Statistics
    ///
    /// Per group (`problem_id`, `problem_family`, `task_type`, `agent` or `model`): runs, finished,
    /// succeeded, infrastructure failures, success rate (infrastructure failures left out unless
    /// `include_infrastructure=true`), and the mean, median and 90th percentile of duration and steps of
    /// finished runs. Optionally only one batch's tasks, or one problem's.
    #[oai(path = "/stats", method = "get", operation_id = "stats")]
    async fn stats(
        &self,
        _auth: Auth<Read>,
        /// Only tasks of this batch.
        batch_id: Query<Option<Uuid>>,
        /// Only tasks of this problem.
        problem_id: Query<ProblemFilter>,
        /// What to group by (default `problem_id`).
        #[oai(default = "default_group_by")]
        group_by: Query<GroupBy>,
        /// Count infrastructure failures in the success rate too (default: left out, since the agent never
        /// acted in them).
        #[oai(default)]
        include_infrastructure: Query<bool>,
    ) -> Result<Json<Stats>, ApiError> {
        let filter = ListFilter {
            batch_id: batch_id.0,
            problem_id: problem_id.0.into_inner(),
            ..Default::default()
        };
        Ok(Json(
            results::stats(
                &self.state.db,
                &filter,
                group_by.0,
                include_infrastructure.0,
            )
            .await?,
        ))
    }

    /// Leaderboard
    ///
    /// Rows (`agent` or `model`) × columns (`problem_id`, `problem_family` or `task_type`) of finished runs.
    /// Per cell: runs, successes, success rate with its 95 % Wilson interval, infrastructure failures and
    /// cancelled runs (both left out of the rate; `include_infrastructure=true` counts the former), mean and
    /// median of AIOpsLab's TTD, TTL, TTA and TTM, mean tokens. Optionally one batch's tasks; as JSON or CSV.
    #[oai(path = "/stats/matrix", method = "get", operation_id = "stats_matrix")]
    async fn stats_matrix(
        &self,
        _auth: Auth<Read>,
        /// Only tasks of this batch.
        batch_id: Query<Option<Uuid>>,
        /// The rows (default `agent`).
        #[oai(default = "default_rows")]
        rows: Query<Rows>,
        /// The columns (default `problem_id`).
        #[oai(default = "default_cols")]
        cols: Query<Cols>,
        /// Count infrastructure failures in the rates too.
        #[oai(default)]
        include_infrastructure: Query<bool>,
        /// `json` (default) or `csv`.
        #[oai(default = "default_matrix_format")]
        format: Query<MatrixFormat>,
    ) -> Result<MatrixResponse, ApiError> {
        let filter = ListFilter {
            batch_id: batch_id.0,
            ..Default::default()
        };
        let m = leaderboard::matrix(
            &self.state.db,
            &filter,
            rows.0,
            cols.0,
            include_infrastructure.0,
        )
        .await?;
        Ok(match format.0 {
            MatrixFormat::Json => MatrixResponse::Json(m),
            MatrixFormat::Csv => MatrixResponse::Csv(leaderboard::to_csv(&m)),
        })
    }
}
