//! The errors handlers answer with: one enum, one status per variant, each answered as the specification's
//! JSON body `{detail, type, request_id}`. (Errors raised by poem before a handler runs are turned into the
//! same body by [`crate::middleware`].)

use poem_openapi::{ApiResponse, payload::Json};
use task_executor_shared::api::ErrorBody;

use crate::store::StoreError;

tokio::task_local! {
    /// The id of the request being served, for error bodies and log fields.
    pub static REQUEST_ID: String;
}

/// The request id of the current request (or `-` outside one).
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

pub(crate) fn body(kind: &str, detail: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        detail: detail.into(),
        kind: kind.to_owned(),
        request_id: request_id(),
    })
}

/// The errors a handler answers with. Each variant is one status; `type` in the body says which kind.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// 400: the request is not well-formed (malformed JSON).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// 401: authentication is on and the request has no usable token (`Authorization: Bearer …`).
    #[oai(status = 401)]
    Unauthorized(
        Json<ErrorBody>,
        /// `Bearer`: the scheme to authenticate with.
        #[oai(header = "WWW-Authenticate")]
        String,
    ),
    /// 403: the token's role does not cover this operation, or a worker token acts for a worker id outside
    /// its pattern, or a state-changing request came from another site (a cross-site form).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// 404: the task, worker or route does not exist.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// 409: the operation conflicts with the current state (e.g. cancelling a finished task, an idempotency
    /// key reused with another body, a report from a worker that no longer holds the task).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// 408: the body did not arrive in time.
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
    /// 413: the body is larger than 1 MiB, or a batch matrix expands to more than 10,000 tasks
    /// (`batch_too_large`).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// 415: the body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// 422: the request is well-formed but a value is invalid.
    #[oai(status = 422)]
    Validation(Json<ErrorBody>),
    /// 429: too many requests of this kind at once (e.g. waiting claims); retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ErrorBody>,
        /// Seconds to wait before trying again.
        #[oai(header = "Retry-After")]
        u64,
    ),
    /// 500: something failed inside the server; the details are in its log, not in the answer.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// 503: the database does not answer, or the queue is full (`queue_full`, with `Retry-After`).
    #[oai(status = 503)]
    Unavailable(
        Json<ErrorBody>,
        /// Seconds to wait before trying again, when known.
        #[oai(header = "Retry-After")]
        Option<u64>,
    ),
}

impl ApiError {
    pub fn not_found(kind: &str, detail: impl Into<String>) -> Self {
        ApiError::NotFound(body(kind, detail))
    }
    pub fn conflict(kind: &str, detail: impl Into<String>) -> Self {
        ApiError::Conflict(body(kind, detail))
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        ApiError::Unauthorized(body("unauthorized", detail), "Bearer".to_owned())
    }
    pub fn forbidden(kind: &str, detail: impl Into<String>) -> Self {
        ApiError::Forbidden(body(kind, detail))
    }
    pub fn validation(detail: impl Into<String>) -> Self {
        let detail = task_executor_shared::validate::clip(&detail.into());
        ApiError::Validation(body("validation_error", detail))
    }
    /// The status and the `detail` of the error (what the dashboard shows).
    pub fn status_and_detail(&self) -> (poem::http::StatusCode, String) {
        use poem::http::StatusCode as S;
        let (status, body) = match self {
            ApiError::BadRequest(b) => (S::BAD_REQUEST, b),
            ApiError::Unauthorized(b, _) => (S::UNAUTHORIZED, b),
            ApiError::Forbidden(b) => (S::FORBIDDEN, b),
            ApiError::NotFound(b) => (S::NOT_FOUND, b),
            ApiError::Conflict(b) => (S::CONFLICT, b),
            ApiError::RequestTimeout(b) => (S::REQUEST_TIMEOUT, b),
            ApiError::PayloadTooLarge(b) => (S::PAYLOAD_TOO_LARGE, b),
            ApiError::UnsupportedMediaType(b) => (S::UNSUPPORTED_MEDIA_TYPE, b),
            ApiError::Validation(b) => (S::UNPROCESSABLE_ENTITY, b),
            ApiError::TooManyRequests(b, _) => (S::TOO_MANY_REQUESTS, b),
            ApiError::Internal(b) => (S::INTERNAL_SERVER_ERROR, b),
            ApiError::Unavailable(b, _) => (S::SERVICE_UNAVAILABLE, b),
        };
        let detail = if status.is_server_error() {
            format!("{} (request {})", body.detail, body.request_id)
        } else {
            body.detail.clone()
        };
        (status, detail)
    }

    /// An internal failure: logged here in full, answered opaquely.
    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(request_id = %request_id(), error = %err, "internal error");
        ApiError::Internal(body("internal_error", "internal server error"))
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::TaskNotFound(id) => {
                ApiError::not_found("task_not_found", format!("task {id} not found"))
            }
            StoreError::BatchNotFound(id) => {
                ApiError::not_found("batch_not_found", format!("batch {id} not found"))
            }
            StoreError::WorkerNotFound(id) => {
                ApiError::not_found("worker_not_found", format!("worker {id} not found"))
            }
            e @ StoreError::WorkerOffline(_) => ApiError::conflict("worker_offline", e.to_string()),
            StoreError::Conflict { kind, detail } => ApiError::conflict(kind, detail),
            StoreError::TooMany {
                kind,
                detail,
                retry_after,
            } => ApiError::TooManyRequests(body(kind, detail), retry_after),
            StoreError::QueueFull {
                detail,
                retry_after,
            } => ApiError::Unavailable(body("queue_full", detail), Some(retry_after)),
            StoreError::Invalid(detail) => ApiError::validation(detail),
            StoreError::Db(e) => ApiError::internal(&e),
        }
    }
}
