//! The HTTP layer: one `#[OpenApi]` struct per resource, assembled here with the OpenAPI document, Swagger UI
//! and the edge middleware. Handlers parse, call the store or the dispatcher, and map the result.

pub mod batches;
pub mod body;
pub mod document;
pub mod events;
pub mod health;
pub mod internal;
pub mod query;
pub mod tasks;
pub mod workers;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, IntoResponse, Route, web::Html};
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
    let generated = api.spec();
    let document = document::plain(&generated);
    let edge = Arc::new(middleware::Edge {
        metrics: state.metrics.clone(),
        allow: middleware::AllowTable::from_spec(&document),
        body_timeout: std::time::Duration::from_secs(state.config.request_body_timeout_seconds),
        auth: state.auth.clone(),
        limiter: state.limiter.clone(),
    });
    // Swagger UI embeds the document it shows: the served one takes the place of poem-openapi's.
    let docs_page = api.swagger_ui_html().replacen(&generated, &document, 1);
    let docs = Route::new().at(
        "/",
        poem::endpoint::make_sync(move |_| Html(docs_page.clone())),
    );
    let spec = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json")
            .body(document.clone())
    });
    // `/` (which the API's nest at the root would answer 404) leads to the dashboard.
    let api = api.around(|ep, req| async move {
        if req.uri().path() == "/" && matches!(req.method().as_str(), "GET" | "HEAD") {
            return Ok(crate::ui::root());
        }
        ep.call(req).await.map(IntoResponse::into_response)
    });
    Route::new()
        .nest("/ui", crate::ui::routes(state))
        .nest("/docs", docs)
        .at(
            "/ws/tasks/:task_id",
            poem::get(events::ws_task).data(state.clone()),
        )
        .at("/openapi.json", poem::get(spec))
        .nest("/", api)
        .around(move |ep, req| middleware::edge(ep, req, edge.clone()))
}
