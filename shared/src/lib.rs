//! What the API server and the worker daemon share, so that the two binaries cannot drift apart: the types
//! that cross the wire (request and response bodies, task and worker states, checked identifiers — each
//! deriving both poem-openapi, for the generated OpenAPI document, and serde, for the daemon's HTTP client),
//! a task's effective parameters, the execution engine (`runner`) and the worker loop (`worker`).

pub mod api;
pub mod ids;
pub mod interval;
pub mod limits;
pub mod metrics;
pub mod params;
pub mod runner;
pub mod status;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validate;
pub mod worker;

pub use ids::{InstanceId, ProblemGlob, ProblemId, Text, WorkerId};
pub use status::{FailedBy, FailureKind, LogLevel, Role, TaskStatus, WorkerStatus};
