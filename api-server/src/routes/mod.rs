//! The HTTP layer: one `#[OpenApi]` struct per resource, assembled here with the OpenAPI document, Swagger UI
//! and the edge middleware. Handlers parse, call the store or the dispatcher, and map the result.

pub mod batches;
pub mod events;
pub mod health;
pub mod internal;
pub mod tasks;
pub mod workers;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, IntoResponse, Route};
use poem_openapi::{OpenApiService, Tags};

use crate::{middleware, state::AppState};

#[derive(Tags)]
pub enum ApiTags {
    /// Queue, inspect and cancel AIOpsLab problem runs.
    Tasks,
    /// The worker registry and the protocol remote workers speak.
    Workers,
    /// Liveness, readiness and metrics.
    Health,
}

type Apis = (
    health::HealthApi,
    tasks::TasksApi,
    batches::BatchesApi,
    events::EventsApi,
    internal::InternalWorkersApi,
    workers::WorkersApi,
);

/// Every API operation, as one OpenAPI service (its document is `/openapi.json`).
pub fn api_service(state: &AppState) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            health::HealthApi {
                state: state.clone(),
            },
            tasks::TasksApi {
                state: state.clone(),
            },
            batches::BatchesApi {
                state: state.clone(),
            },
            events::EventsApi {
                state: state.clone(),
            },
            internal::InternalWorkersApi {
                state: state.clone(),
            },
            workers::WorkersApi {
                state: state.clone(),
            },
        ),
        "AIOpsLab Task Executor",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Queues AIOpsLab problem runs in a database and hands them to workers that execute them and report \
         logs and results. Every error is `{detail, type, request_id}`. No string anywhere (body or query) may \
         contain the NUL character (`\\u0000`): the database cannot store it, so it is refused with 422.",
    )
}

/// The whole HTTP application: the API, `/openapi.json`, Swagger UI at `/docs`, the dashboard at `/ui` (and
/// `/`), behind the edge middleware.
pub fn app(state: &AppState) -> impl Endpoint + 'static {
    let api = api_service(state);
    let edge = Arc::new(middleware::Edge {
        metrics: state.metrics.clone(),
        allow: AllowTable::from_spec(&api.spec()),
        body_timeout: std::time::Duration::from_secs(state.config.request_body_timeout_seconds),
        auth: state.auth.clone(),
        limiter: state.limiter.clone(),
    });
    let ui = api.swagger_ui();
    let spec = api.spec_endpoint();
    // `/` (which the API's nest at the root would answer 404) leads to the dashboard.
    let api = api.around(|ep, req| async move {
        if req.uri().path() == "/" && matches!(req.method().as_str(), "GET" | "HEAD") {
            return Ok(crate::ui::root());
        }
        ep.call(req).await.map(IntoResponse::into_response)
    });
    Route::new()
        .nest("/ui", crate::ui::routes(state))
        .nest("/docs", ui)
        .at(
            "/ws/tasks/:task_id",
            poem::get(events::ws_task).data(state.clone()),
        )
        .at("/openapi.json", spec)
        .nest("/", api)
        .around(move |ep, req| middleware::edge(ep, req, edge.clone()))
}

/// The methods each path of the API answers, read from its own OpenAPI document: what a 405 lists in its
/// `Allow` header.
pub struct AllowTable {
    /// Path templates split in segments (`{…}` matches any one segment), with their methods.
    paths: Vec<(Vec<String>, String)>,
}

impl AllowTable {
    pub fn from_spec(spec: &str) -> AllowTable {
        let doc: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let mut paths = Vec::new();
        if let Some(map) = doc.get("paths").and_then(|p| p.as_object()) {
            for (path, ops) in map {
                let mut methods: Vec<String> = ops
                    .as_object()
                    .map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect())
                    .unwrap_or_default();
                methods.sort();
                let segments = path.split('/').map(str::to_owned).collect();
                paths.push((segments, methods.join(", ")));
            }
        }
        AllowTable { paths }
    }

    /// The `Allow` value of a request path, when it is one of the API's.
    pub fn allowed(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        self.paths
            .iter()
            .filter(|(template, _)| {
                template.len() == segments.len()
                    && template
                        .iter()
                        .zip(&segments)
                        .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
            })
            // A literal segment beats a parameter (`/workers/internal/status` over `/workers/{id}/…`).
            .max_by_key(|(template, _)| template.iter().filter(|t| !t.starts_with('{')).count())
            .map(|(_, methods)| methods.as_str())
    }
}
