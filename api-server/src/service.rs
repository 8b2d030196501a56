//! What the API's handlers and the dashboard's forms both do, beside the store's queries: the logging and
//! the metrics that go with a change.

use uuid::Uuid;

use crate::{
    error::ApiError,
    state::AppState,
    store::{batches, tasks},
};

/// Cancels a task: what `POST /api/v1/tasks/{id}/cancel` and the dashboard's Cancel button do.
pub async fn cancel_task(
    state: &AppState,
    id: Uuid,
) -> Result<crate::store::entity::task::Model, ApiError> {
    let task = tasks::cancel(&state.db, id).await?;
    tracing::info!(task_id = %task.id, "task cancelled");
    state.metrics.task_finished(&task);
    Ok(task)
}

/// Cancels a batch's unfinished tasks; how many: what `POST /api/v1/batches/{id}/cancel` and the dashboard's
/// Cancel button do.
pub async fn cancel_batch(state: &AppState, id: Uuid) -> Result<i64, ApiError> {
    let cancelled = batches::cancel(&state.db, id).await?;
    tracing::info!(batch_id = %id, cancelled, "batch cancelled");
    Ok(cancelled)
}
