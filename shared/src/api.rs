//! Request and response bodies of the HTTP API. Field names are the wire names.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem_openapi::Object;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    FailedBy, FailureKind, InstanceId, LogLevel, ProblemGlob, ProblemId, TaskStatus, Text,
    WorkerId, WorkerStatus,
};

/// A free-form JSON object.
pub type JsonObject = BTreeMap<String, Value>;

/// The error body of every non-2xx answer.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub detail: String,
    /// A stable machine-readable kind, e.g. `validation_error`, `not_found`, `task_not_held`.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    /// The id of the request, also sent as the `X-Request-Id` header.
    pub request_id: String,
}

// ---------------------------------------------------------------------------------------------------------
// Tasks

/// A new task: one AIOpsLab problem run.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct CreateTaskRequest {
    /// The AIOpsLab problem id, e.g. `misconfig_app_hotel_res-detection-1`.
    pub problem_id: ProblemId,
    /// Run parameters. `max_steps` (1-10000) and `timeout` (seconds, 1-604800) are filled in with the
    /// server's defaults when absent; `agent_config` and any other key are kept as given for the runner.
    #[oai(default, nullable)]
    #[serde(default)]
    pub parameters: JsonObject,
    /// Higher runs first; default 0.
    #[oai(default, nullable)]
    #[serde(default)]
    pub priority: i32,
}

/// A task with everything the service knows about it.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct Task {
    pub id: Uuid,
    pub problem_id: String,
    pub status: TaskStatus,
    pub priority: i32,
    /// The effective parameters (defaults filled in).
    pub parameters: JsonObject,
    /// The worker that holds or last held the task.
    #[oai(nullable)]
    pub worker_id: Option<String>,
    /// The outcome reported by the runner (`success`, `output`, `metrics`, …); on failure also `error`.
    #[oai(nullable)]
    pub result: Option<Value>,
    /// 1 on the first run, +1 on each requeue; 0 while never claimed.
    pub attempt: i32,
    /// Until when the holding worker's claim is valid without a heartbeat.
    #[oai(nullable)]
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub completed_at: Option<DateTime<Utc>>,
    /// The name of the API token that created the task (null when authentication was off).
    #[oai(nullable)]
    pub created_by: Option<String>,
    /// The batch (campaign) the task was submitted in, if any.
    #[oai(nullable)]
    pub batch_id: Option<Uuid>,
    /// Why it ended as it did, once finished: `none`, `agent`, `infrastructure`, `timeout` or `cancelled`.
    #[oai(nullable)]
    pub failure_kind: Option<FailureKind>,
}

/// A task just claimed by a worker: the task, and the lease id of this run, which every report about the run
/// must carry. Only the claiming worker ever sees it.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct ClaimedTask {
    #[oai(flatten)]
    #[serde(flatten)]
    pub task: Task,
    /// The fencing token of this run: new at every claim, never the same twice for a task.
    pub lease_id: Uuid,
}

/// A task as listed.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct TaskSummary {
    pub id: Uuid,
    pub problem_id: String,
    pub status: TaskStatus,
    pub priority: i32,
    #[oai(nullable)]
    pub worker_id: Option<String>,
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The batch the task was submitted in, if any.
    #[oai(nullable)]
    pub batch_id: Option<Uuid>,
    /// Why it ended as it did, once finished.
    #[oai(nullable)]
    pub failure_kind: Option<FailureKind>,
}

/// Answer to a cancel.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct CancelResponse {
    pub message: String,
    pub task_id: Uuid,
}

/// One entry of a task's log.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct LogEntry {
    pub timestamp: DateTime<Utc>,
    pub level: LogLevel,
    pub message: String,
    #[oai(nullable)]
    pub context: Option<Value>,
    /// The attempt that wrote it, when a worker did.
    #[oai(nullable)]
    pub attempt: Option<i32>,
}

// ---------------------------------------------------------------------------------------------------------
// Workers

/// What a worker can do.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct WorkerCapabilities {
    /// How many tasks the worker runs at once (1-256); default 1.
    #[oai(
        default = "default_parallel",
        nullable,
        validator(minimum(value = "1"), maximum(value = "256"))
    )]
    #[serde(default = "default_parallel")]
    pub max_parallel_tasks: i32,
    /// Glob patterns (`*`, `?`) of the problem ids the worker takes; empty takes every problem.
    #[oai(default, nullable, validator(max_items = 100))]
    #[serde(default)]
    pub supported_problems: Vec<ProblemGlob>,
}

fn default_parallel() -> i32 {
    1
}

impl Default for WorkerCapabilities {
    fn default() -> Self {
        WorkerCapabilities {
            max_parallel_tasks: 1,
            supported_problems: Vec::new(),
        }
    }
}

/// Registration of a worker, or re-registration of a restarted one.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct RegisterWorkerRequest {
    pub worker_id: WorkerId,
    /// Where the worker runs its tasks, e.g. `kind`.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub backend_type: Text,
    #[oai(default, nullable)]
    #[serde(default)]
    pub capabilities: WorkerCapabilities,
    /// Free-form facts about the worker (hostname, version, …).
    #[oai(nullable)]
    pub metadata: Option<Value>,
    /// Which process this is (1-128 visible characters), stable across its restarts: an id that a live
    /// process of another instance holds is refused (409 `worker_id_in_use`); the same instance takes over
    /// at once. Without one, registration always takes over.
    #[oai(nullable)]
    pub instance_id: Option<InstanceId>,
}

/// Answer to a registration.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct RegisterWorkerResponse {
    pub id: String,
    pub backend_type: String,
    pub status: WorkerStatus,
    pub registered_at: DateTime<Utc>,
    /// How long a lease lasts without a heartbeat (the server's heartbeat timeout), in seconds: a worker
    /// that could not renew its leases for longer must stop those runs, they are given to others.
    pub lease_seconds: i64,
}

/// A worker as the server sees it.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    pub backend_type: String,
    pub status: WorkerStatus,
    /// Why it is `degraded` (its runner cannot run problems now), else null.
    #[oai(nullable)]
    pub status_reason: Option<String>,
    pub last_heartbeat: DateTime<Utc>,
    pub registered_at: DateTime<Utc>,
    pub capabilities: WorkerCapabilities,
    #[oai(nullable)]
    pub metadata: Option<Value>,
    /// The running tasks it holds.
    pub current_task_ids: Vec<Uuid>,
    pub tasks_completed: i64,
    pub tasks_failed: i64,
}

/// A worker's heartbeat.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// `idle` or `busy` (informative: the server derives both from the tasks held), or `offline` when the
    /// worker is going away.
    pub status: WorkerStatus,
    /// The task the worker runs, for a worker of one slot.
    #[oai(nullable)]
    pub current_task_id: Option<Uuid>,
    /// With `status: "degraded"`: why the worker's runner cannot run problems now.
    #[oai(nullable, validator(max_length = 2000))]
    pub reason: Option<Text>,
    /// Every task the worker runs, for a worker of several slots (`null` is none).
    #[oai(default, nullable)]
    #[serde(default)]
    pub running_task_ids: Vec<Uuid>,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub message: String,
    pub timestamp: DateTime<Utc>,
    /// Tasks this worker holds that were cancelled or timed out: stop them.
    pub cancel_task_ids: Vec<Uuid>,
}

/// A batch of log entries from the worker running a task.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct ReportLogsRequest {
    pub attempt: i32,
    /// The run's lease id, from the claim.
    pub lease_id: Uuid,
    #[oai(validator(max_items = 1000))]
    pub entries: Vec<NewLogEntry>,
}

/// A log entry sent by a worker; `timestamp` defaults to the time of arrival.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct NewLogEntry {
    #[oai(nullable)]
    pub timestamp: Option<DateTime<Utc>>,
    pub level: LogLevel,
    #[oai(validator(max_length = 65536))]
    pub message: Text,
    #[oai(nullable)]
    pub context: Option<Value>,
}

/// Answer to a batch of log entries.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct ReportLogsResponse {
    pub accepted: u64,
}

/// A run that finished: the task becomes `completed` with this result.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct CompleteTaskRequest {
    pub attempt: i32,
    /// The run's lease id, from the claim.
    pub lease_id: Uuid,
    /// The runner's result: `success`, `output`, `metrics`, and anything else.
    pub result: JsonObject,
}

/// How a failed run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, Serialize, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum FailStatus {
    Failed,
    Timeout,
}

impl From<FailStatus> for TaskStatus {
    fn from(s: FailStatus) -> Self {
        match s {
            FailStatus::Failed => TaskStatus::Failed,
            FailStatus::Timeout => TaskStatus::Timeout,
        }
    }
}

/// A run that did not finish well: the task becomes `failed` (or `timeout`).
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct FailTaskRequest {
    pub attempt: i32,
    /// The run's lease id, from the claim.
    pub lease_id: Uuid,
    #[oai(validator(max_length = 65536))]
    pub error: Text,
    #[oai(nullable)]
    pub status: Option<FailStatus>,
    /// Whatever partial result the runner produced; `error` is added to it.
    #[oai(nullable)]
    pub result: Option<JsonObject>,
    /// Whose failure it is: `agent` (the agent was running: its answer, its code, its steps) or
    /// `infrastructure` (the run failed before the agent could act: cluster, deployment, fault injection).
    /// An infrastructure failure goes back to the queue while the task has attempts left
    /// (`TASK_MAX_ATTEMPTS`); without it, the failure counts against the agent.
    #[oai(nullable)]
    pub failure_kind: Option<FailedBy>,
}

/// A run given back by a worker that stops: the task goes back to the queue without using an attempt.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct ReleaseTaskRequest {
    pub attempt: i32,
    /// The run's lease id, from the claim.
    pub lease_id: Uuid,
    /// Why the run is given back, when not because the worker stops (e.g. its runner cannot run here).
    #[oai(nullable, validator(max_length = 2000))]
    pub reason: Option<Text>,
}

/// Who the caller is, as the server sees its token.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct Identity {
    /// Whether this server asks for tokens. When `false`, every caller may do everything (the server listens
    /// on loopback only, or was started with `--insecure-no-auth`) and the other fields are null.
    pub auth_enabled: bool,
    /// The token's name.
    #[oai(nullable)]
    pub name: Option<String>,
    /// The token's role.
    #[oai(nullable)]
    pub role: Option<crate::Role>,
    /// For a `worker` token: the worker ids it may act as (`*` any run of characters, `?` any one).
    #[oai(nullable)]
    pub worker_pattern: Option<String>,
}

/// What an event says: a state change, a log entry, or the end of a task's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, Serialize, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Status,
    Log,
    End,
}

/// One event of a live stream (`/api/v1/tasks/{id}/events`, `/ws/tasks/{id}`, `/api/v1/events`). `seq` is the
/// position in the service's log: it only grows, and a client that resumes after the last `seq` it saw misses
/// nothing and gets nothing twice. The first event of a task's stream is its current state (`type: status`,
/// with the whole `task`); `end` (after the final state change, repeating its `seq`) closes it.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct TaskEvent {
    pub seq: i64,
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub task_id: Uuid,
    pub timestamp: DateTime<Utc>,
    /// The state the task entered (`status`), or is in (`end`).
    #[oai(nullable)]
    pub status: Option<TaskStatus>,
    #[oai(nullable)]
    pub level: Option<LogLevel>,
    #[oai(nullable)]
    pub message: Option<String>,
    #[oai(nullable)]
    pub context: Option<Value>,
    /// The run the entry concerns.
    #[oai(nullable)]
    pub attempt: Option<i32>,
    /// The whole task: in the first event of a task's stream only.
    #[oai(nullable)]
    pub task: Option<Box<Task>>,
}

/// One task of a batch: what creating it alone would take.
pub type BatchTask = CreateTaskRequest;

/// A campaign given task by task. 1-10,000 tasks, created together or not at all.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct BatchOfTasks {
    /// A name to find the batch by.
    #[oai(validator(min_length = 1, max_length = 255), nullable)]
    pub name: Option<Text>,
    /// The tasks.
    #[oai(validator(min_items = 1, max_items = 10000))]
    pub tasks: Vec<BatchTask>,
}

/// A campaign as a matrix the server expands: `problems` × `agent_configs` × `repetitions` tasks (at most
/// 10,000), each task's parameters being `parameters` with its `agent_config` and `repetition` set.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct BatchMatrix {
    /// A name to find the batch by.
    #[oai(validator(min_length = 1, max_length = 255), nullable)]
    pub name: Option<Text>,
    /// The problems.
    #[oai(validator(min_items = 1, max_items = 10000))]
    pub problems: Vec<ProblemId>,
    /// The agent configurations (each becomes a task's `parameters.agent_config`); none: the parameters'
    /// own.
    #[oai(validator(max_items = 1000), nullable)]
    pub agent_configs: Option<Vec<JsonObject>>,
    /// Runs of each problem × agent configuration (1-1000, default 1), numbered in `parameters.repetition`.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000")), nullable)]
    pub repetitions: Option<u32>,
    /// The parameters every task starts from.
    #[oai(nullable)]
    pub parameters: Option<JsonObject>,
    /// Every task's priority (default 0).
    #[oai(nullable)]
    pub priority: Option<i32>,
}

/// A new batch: task by task (`tasks`), or a matrix (`problems`); a body that is both is refused.
#[derive(Debug, Clone, poem_openapi::Union, Serialize, Deserialize)]
#[oai(one_of)]
#[serde(untagged)]
pub enum CreateBatchRequest {
    Tasks(BatchOfTasks),
    Matrix(BatchMatrix),
}

/// Tasks of a batch by status.
#[derive(Debug, Clone, Default, Object, Serialize, Deserialize)]
pub struct StatusCounts {
    pub pending: i64,
    pub running: i64,
    pub completed: i64,
    pub failed: i64,
    pub timeout: i64,
    pub cancelled: i64,
}

/// A batch and how far it is.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct Batch {
    pub id: Uuid,
    #[oai(nullable)]
    pub name: Option<String>,
    /// The token that created it (null when authentication was off).
    #[oai(nullable)]
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub task_count: i64,
    pub counts: StatusCounts,
    /// Tasks in a final state.
    pub finished: i64,
    /// `finished / task_count`, 0 to 1.
    pub progress: f64,
    /// Completed tasks whose result says `success: true`.
    pub succeeded: i64,
    /// `succeeded / finished`; null while none has finished.
    #[oai(nullable)]
    pub success_rate: Option<f64>,
    /// When its first run started (null while none has).
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    /// When its last task finished, once all have (else null).
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// A batch just created: its id and its tasks' ids, in the order given (or expanded).
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct CreatedBatch {
    pub id: Uuid,
    #[oai(nullable)]
    pub name: Option<String>,
    pub task_count: i64,
    pub task_ids: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// Answer to a batch cancel.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
pub struct CancelBatchResponse {
    pub id: Uuid,
    /// Tasks that were pending or running and are now cancelled.
    pub cancelled: i64,
}
