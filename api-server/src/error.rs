//! Errors at the API edge. Every non-2xx answer of every route, including the ones poem and poem-openapi
//! produce on their own (unknown route, wrong method, malformed JSON, wrong content type, bad parameter), is
//! the specification's JSON body `{detail, type, request_id}`; each response carries `X-Request-Id`.

use std::sync::Arc;

use poem::{
    Endpoint, IntoResponse, Request, Response,
    error::{MethodNotAllowedError, NotFoundError, ReadBodyError},
    http::{HeaderValue, StatusCode, header},
};
use poem_openapi::{
    ApiResponse,
    error::{ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError},
    payload::Json,
};
use task_executor_shared::api::ErrorBody;

use crate::{metrics::Metrics, store::StoreError};
use poem::PathPattern;
use tracing::Instrument;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

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

fn body(kind: &str, detail: impl Into<String>) -> Json<ErrorBody> {
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
    /// 404: the task, worker or route does not exist.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// 409: the operation conflicts with the current state (e.g. cancelling a finished task, an idempotency
    /// key reused with another body, a report from a worker that no longer holds the task).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// 413: the body is larger than 1 MiB.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// 415: the body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// 422: the request is well-formed but a value is invalid.
    #[oai(status = 422)]
    Validation(Json<ErrorBody>),
    /// 500: something failed inside the server; the details are in its log, not in the answer.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// 503: the database does not answer.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

impl ApiError {
    pub fn not_found(kind: &str, detail: impl Into<String>) -> Self {
        ApiError::NotFound(body(kind, detail))
    }
    pub fn conflict(kind: &str, detail: impl Into<String>) -> Self {
        ApiError::Conflict(body(kind, detail))
    }
    pub fn validation(detail: impl Into<String>) -> Self {
        ApiError::Validation(body("validation_error", detail))
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
            StoreError::WorkerNotFound(id) => {
                ApiError::not_found("worker_not_found", format!("worker {id} not found"))
            }
            StoreError::Conflict { kind, detail } => ApiError::conflict(kind, detail),
            StoreError::Invalid(detail) => ApiError::validation(detail),
            StoreError::Db(e) => ApiError::internal(&e),
        }
    }
}

/// Status and `type` of an error that poem or poem-openapi raised before a handler ran.
fn classify(err: &poem::Error) -> (StatusCode, &'static str, String) {
    if err.is::<NotFoundError>() {
        return (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route".to_owned(),
        );
    }
    if err.is::<MethodNotAllowedError>() {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route".to_owned(),
        );
    }
    if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        // The body was already checked to be syntactically valid JSON: what is left is its shape or values.
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            e.reason.clone(),
        );
    }
    if let Some(e) = err.downcast_ref::<ParseParamError>() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            format!("parameter `{}`: {}", e.name, e.reason),
        );
    }
    if let Some(e) = err.downcast_ref::<ParsePathError>() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            format!("invalid path parameter: {}", e.reason),
        );
    }
    if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        );
    }
    let status = err.status();
    if status.is_server_error() {
        return (status, "internal_error", err.to_string());
    }
    (status, "error", err.to_string())
}

fn json_error(status: StatusCode, kind: &str, detail: impl Into<String>) -> Response {
    let mut resp = body(kind, detail).into_response();
    resp.set_status(status);
    resp
}

fn is_json(resp: &Response) -> bool {
    resp.content_type()
        .is_some_and(|ct| ct.starts_with("application/json"))
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// The outermost middleware: assigns the request id, opens the request's tracing span, bounds and checks the
/// body, turns every error into the specification's JSON body, and records the HTTP metrics by route template.
pub async fn edge<E: Endpoint>(
    next: Arc<E>,
    mut req: Request,
    metrics: Arc<Metrics>,
) -> poem::Result<Response> {
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::new_v4().simple()));
    let header_value = HeaderValue::from_str(&rid).expect("request ids are visible ASCII");
    let span = tracing::info_span!("request", request_id = %rid, method = %method, path = %req.uri().path());
    let mut route: Option<String> = None;
    let route_slot = &mut route;
    let mut resp = REQUEST_ID
        .scope(rid, async move {
            let bytes = match req.take_body().into_bytes_limit(MAX_BODY_BYTES).await {
                Ok(b) => b,
                Err(ReadBodyError::PayloadTooLarge) => {
                    return json_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("request body is larger than {MAX_BODY_BYTES} bytes"),
                    );
                }
                Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
            };
            let declares_json = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"));
            if declares_json
                && !bytes.is_empty()
                && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
            {
                return json_error(StatusCode::BAD_REQUEST, "malformed_json", format!("malformed JSON: {e}"));
            }
            req.set_body(bytes);
            match next.call(req).await {
                Ok(resp) => {
                    let resp = resp.into_response();
                    *route_slot = resp.data::<PathPattern>().map(|p| p.0.to_string());
                    if resp.status().is_client_error() || resp.status().is_server_error() {
                        if is_json(&resp) {
                            return resp;
                        }
                        let status = resp.status();
                        return json_error(status, "error", status.canonical_reason().unwrap_or("error"));
                    }
                    resp
                }
                Err(err) => {
                    *route_slot = err.data::<PathPattern>().map(|p| p.0.to_string());
                    let (status, kind, detail) = classify(&err);
                    let resp = err.into_response();
                    if is_json(&resp) && resp.status() == status {
                        // Already one of ours (an ApiError raised by a handler).
                        return resp;
                    }
                    if status.is_server_error() {
                        // Logged in full here, answered opaquely.
                        tracing::error!(request_id = %request_id(), error = %detail, "internal error");
                        return json_error(status, kind, "internal server error");
                    }
                    json_error(status, kind, detail)
                }
            }
        })
        .instrument(span)
        .await;
    resp.headers_mut().insert("x-request-id", header_value);
    metrics.http_request(
        route
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "unmatched".to_owned()),
        method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(resp)
}
