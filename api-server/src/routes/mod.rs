//! The HTTP layer: one `#[OpenApi]` struct per resource, combined in [`crate::startup`].

pub mod health;
pub mod internal;
pub mod tasks;
pub mod workers;

use poem_openapi::Tags;

#[derive(Tags)]
pub enum ApiTags {
    /// Queue, inspect and cancel AIOpsLab problem runs.
    Tasks,
    /// The worker registry and the protocol remote workers speak.
    Workers,
    /// Liveness, readiness and metrics.
    Health,
}
