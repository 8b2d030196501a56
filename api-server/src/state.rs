//! What every handler and background loop shares.

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::{
    auth, config::Config, dispatch::Dispatcher, metrics::Metrics, ratelimit::RateLimiter,
    supervisor::Supervisor,
};

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub config: Arc<Config>,
    /// The server side of the worker protocol (also what internal workers use).
    pub dispatcher: Dispatcher,
    pub supervisor: Arc<Supervisor>,
    pub metrics: Arc<Metrics>,
    /// The tokens this server accepts.
    pub auth: Arc<auth::Registry>,
    /// The log's progress, which live streams follow.
    pub tail: Arc<crate::events::Tail>,
    /// The request rate limit (none: unlimited).
    pub limiter: Option<Arc<RateLimiter>>,
    /// Tasks by status, read at a cost that does not grow with the table.
    pub counts: Arc<crate::store::stats::StatusCounts>,
    /// The caps on new tasks, with the counts the requests of this process share.
    pub admission: crate::store::tasks::Admission,
}
