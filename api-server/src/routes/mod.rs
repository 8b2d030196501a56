//! The HTTP layer: one `#[OpenApi]` struct per resource, assembled here with the OpenAPI document, Swagger UI
//! and the edge middleware. Handlers parse, call the store or the dispatcher, and map the result.

pub mod health;
pub mod internal;
pub mod tasks;
pub mod workers;

use poem::{Endpoint, EndpointExt, Route};
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
         logs and results. Every error is `{detail, type, request_id}`.",
    )
}

/// The whole HTTP application: the API, `/openapi.json`, Swagger UI at `/docs`, behind the edge middleware.
pub fn app(state: &AppState) -> impl Endpoint + 'static {
    let api = api_service(state);
    let ui = api.swagger_ui();
    let spec = api.spec_endpoint();
    let metrics = state.metrics.clone();
    Route::new()
        .nest("/docs", ui)
        .at("/openapi.json", spec)
        .nest("/", api)
        .around(move |ep, req| middleware::edge(ep, req, metrics.clone()))
}
