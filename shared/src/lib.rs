//! Types that cross the wire between the API server and the worker daemon: request and response bodies,
//! task and worker states, and the checks on identifiers. Keeping them in one crate means the two binaries
//! cannot drift apart; every type derives both poem-openapi (for the generated OpenAPI document) and serde
//! (for the daemon's HTTP client).

pub mod api;
pub mod ids;
pub mod metrics;
pub mod runner;
pub mod status;
pub mod telemetry;
pub mod validate;

pub use ids::{ProblemId, WorkerId};
pub use status::{LogLevel, TaskStatus, WorkerStatus};
