//! The web dashboard at `/ui`: server-rendered HTML (maud) over the same store the API reads, a little
//! hand-written JavaScript for live updates (the API's own event streams), and CSS, all embedded in the binary:
//! nothing is fetched from elsewhere, so it works on an air-gapped cluster host.
//!
//! Sessions: with authentication on, `/ui/login` takes a token once and keeps it in an `HttpOnly`,
//! `SameSite=Lax` cookie (sent on a link followed from elsewhere, never on another site's form or fetch), which the edge accepts in place of the `Authorization` header on `/ui` and on
//! reading (`GET`) API requests (so the pages' event streams and export links work). The API's state-changing
//! operations still need the header: the dashboard acts only through its own forms, each carrying a
//! double-submit token (a random cookie the form must repeat) on top of the edge's `Origin`/`Sec-Fetch-Site`
//! check. Every page answers with a Content-Security-Policy that allows only this server's own script and
//! style, so no inline script or injected markup can run.

mod charts;
mod pages;

use std::sync::{Arc, LazyLock};

use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response, Route,
    http::{HeaderValue, StatusCode, header},
    web::{Data, Form, Path, Query},
};
use serde::Deserialize;
use task_executor_shared::{LogLevel, Role, TaskStatus};
use uuid::Uuid;

use crate::{auth::Caller, error::ApiError, state::AppState};

/// The cookie that holds the session's token.
pub const SESSION_COOKIE: &str = "tex_session";
/// The cookie the dashboard's forms repeat (double-submit protection against cross-site forms).
const CSRF_COOKIE: &str = "tex_csrf";
/// How long a session lasts (the token may be revoked sooner: it is checked at every request).
const SESSION_SECONDS: u64 = 30 * 24 * 3600;

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// A short fingerprint of the embedded assets, in their URLs: a new build is never served a stale copy.
static ASSET_VERSION: LazyLock<String> = LazyLock::new(|| {
    let h = crate::auth::hash_token(&format!("{APP_JS}{APP_CSS}"));
    h[..12].to_owned()
});

/// What every page of the dashboard answers with, beside its body.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The value of cookie `name` in the request, if any.
fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name && !v.is_empty()).then_some(v)
        })
}

/// The token of the dashboard session the request carries, if any.
pub fn session_token(req: &Request) -> Option<&str> {
    cookie(req, SESSION_COOKIE)
}

/// Whether the request reached us over HTTPS (directly or through a proxy that says so): cookies are then
/// marked `Secure`.
fn over_https(req: &Request) -> bool {
    req.uri().scheme_str() == Some("https")
        || req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(req: &Request, name: &str, value: &str, path: &str, max_age: u64) -> HeaderValue {
    let secure = if over_https(req) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .expect("cookie values are visible ASCII")
}

/// The answer instead of a page (a redirect to the login form, a refusal), boxed: a `Response` is large.
type Refusal = Box<Response>;

/// Who is looking, and what they may do: what every page is rendered for.
pub struct Viewer {
    pub caller: Caller,
    /// The form token of this browser (repeated in every form).
    pub csrf: String,
    /// Whether the browser lacked the form cookie (the answer sets it).
    new_csrf: bool,
}

impl Viewer {
    /// `caller`, with this browser's form token (a new one when it has none, or a malformed one).
    fn of(caller: Caller, req: &Request) -> Viewer {
        let existing = cookie(req, CSRF_COOKIE)
            .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()));
        Viewer {
            caller,
            csrf: existing.map(str::to_owned).unwrap_or_else(random_hex),
            new_csrf: existing.is_none(),
        }
    }

    pub fn may(&self, role: Role) -> bool {
        self.caller.require(role).is_ok()
    }

    /// The name and role shown in the header; none without authentication.
    pub fn who(&self) -> Option<(String, Role)> {
        match &self.caller {
            Caller::Token(p) => Some((p.name.clone(), p.role)),
            _ => None,
        }
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    // Without a random source the server could not have started (tokens need one); a zeroed token would only
    // weaken the form check, which the Origin check backs.
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The viewer of a page, or the answer instead of the page: the login form for a browser without a usable
/// session, a 403 for a token that may not read.
fn viewer(req: &Request) -> Result<Viewer, Refusal> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous);
    match caller.require(Role::Read) {
        Ok(()) => {}
        Err(ApiError::Forbidden(_)) => {
            return Err(Box::new(page_response(
                StatusCode::FORBIDDEN,
                pages::message_page(
                    "Not allowed",
                    "This token cannot read the dashboard: it needs the role read, submit or admin. Log out \
                     and use another token.",
                    true,
                ),
                None,
            )));
        }
        Err(_) => {
            // The path as the browser asked for it (`uri()` has lost the `/ui` this is nested under); after a
            // form post (a session that ended meanwhile), the overview: a form's address is no page.
            let next = if req.method() == poem::http::Method::GET {
                req.original_uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/ui")
            } else {
                "/ui"
            };
            let to = format!("/ui/login?next={}", urlencode(next));
            return Err(Box::new(see_other(&to)));
        }
    }
    Ok(Viewer::of(caller, req))
}

/// Refuses a form that does not repeat this browser's form cookie.
fn check_form(req: &Request, csrf: &str) -> Result<(), Refusal> {
    match cookie(req, CSRF_COOKIE) {
        Some(c) if !csrf.is_empty() && c == csrf => Ok(()),
        _ => Err(Box::new(page_response(
            StatusCode::FORBIDDEN,
            pages::message_page(
                "Form expired",
                "This form did not come from this dashboard in this browser (or the browser's cookies were \
                 cleared). Go back, reload the page and try again.",
                false,
            ),
            None,
        ))),
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn see_other(to: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to)
        .finish()
}

/// An HTML answer with the dashboard's headers (and the form cookie when the browser has none yet).
fn page_response(status: StatusCode, body: maud::Markup, viewer: Option<&Viewer>) -> Response {
    page_response_for(None, status, body, viewer)
}

/// [`page_response`], knowing the request (whose scheme decides whether the form cookie is `Secure`).
fn page_response_for(
    req: Option<&Request>,
    status: StatusCode,
    body: maud::Markup,
    viewer: Option<&Viewer>,
) -> Response {
    let mut resp = Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .body(body.into_string());
    if let Some(v) = viewer
        && v.new_csrf
    {
        let c = match req {
            Some(req) => set_cookie(req, CSRF_COOKIE, &v.csrf, "/ui", SESSION_SECONDS),
            None => HeaderValue::from_str(&format!(
                "{CSRF_COOKIE}={}; Path=/ui; Max-Age={SESSION_SECONDS}; HttpOnly; SameSite=Lax",
                v.csrf
            ))
            .expect("form tokens are hex"),
        };
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Whether the request asks for a page's live part only (`?fragment=1`, what the live updates fetch).
fn is_fragment(req: &Request) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "fragment=1"))
}

/// A whole page, or (`?fragment=1`, what the live updates fetch) only its live part.
fn render(req: &Request, viewer: &Viewer, page: pages::Page) -> Response {
    let body = if is_fragment(req) {
        page.live
    } else {
        pages::layout(viewer, &page)
    };
    page_response_for(Some(req), StatusCode::OK, body, Some(viewer))
}

/// The page of an error met while reading or acting: its status and what it says (never internals: a 500
/// is logged and shown opaquely, as by the API).
fn error_page(e: ApiError, viewer: Option<&Viewer>) -> Response {
    let (status, detail) = e.status_and_detail();
    let title = status.canonical_reason().unwrap_or("Error");
    page_response(
        status,
        pages::message_page(title, &detail, viewer.is_some()),
        viewer,
    )
}

/// The id of a task or batch in a path: a malformed one is a 404, like an unknown one.
fn path_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::not_found(
            &format!("{what}_not_found"),
            format!("no {what} has the id `{raw}`"),
        )
    })
}

macro_rules! try_page {
    ($e:expr, $viewer:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return error_page(ApiError::from(e), Some(&$viewer)),
        }
    };
}

/// The dashboard's routes, under `/ui`.
pub fn routes(state: &AppState) -> impl Endpoint + 'static {
    Route::new()
        .at("/", poem::get(overview))
        .at("/tasks", poem::get(tasks_page))
        .at("/tasks/:id", poem::get(task_page))
        .at("/tasks/:id/cancel", poem::post(cancel_task))
        .at("/workers", poem::get(workers_page))
        .at("/workers/internal/:action", poem::post(internal_action))
        .at("/batches", poem::get(batches_page))
        .at("/leaderboard", poem::get(leaderboard_page))
        .at("/batches/:id", poem::get(batch_page))
        .at("/batches/:id/cancel", poem::post(cancel_batch))
        .at("/login", poem::get(login_form).post(login))
        .at("/logout", poem::post(logout))
        .at("/assets/app.js", poem::get(app_js))
        .at("/assets/app.css", poem::get(app_css))
        .data(state.clone())
        .data(Arc::new(Cache::default()))
        .catch_error(|_: poem::error::NotFoundError| async { not_found_response() })
        .after(|res| async move {
            let mut resp = match res {
                Ok(r) => r.into_response(),
                Err(e) => e.into_response(),
            };
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("same-origin"),
            );
            h.entry(header::CACHE_CONTROL)
                .or_insert(HeaderValue::from_static("no-store"));
            Ok(resp)
        })
}

/// `GET /`: the dashboard.
pub fn root() -> Response {
    see_other("/ui")
}

fn not_found_response() -> Response {
    page_response(
        StatusCode::NOT_FOUND,
        pages::message_page("Not found", "There is no such page in the dashboard.", true),
        None,
    )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    Response::builder()
        .content_type(content_type)
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable")
        .body(body)
}

#[poem::handler]
fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

#[poem::handler]
fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

// ---------------------------------------------------------------------------------------------------------
// Pages

/// What the dashboard reuses between viewers: the overview's figures (counts over the whole table), read at
/// most every 750 ms however many browsers watch it.
#[derive(Default)]
struct Cache {
    overview: tokio::sync::Mutex<Option<(std::time::Instant, Arc<pages::OverviewData>)>>,
}

/// How long the overview's figures are reused.
const OVERVIEW_FRESH: std::time::Duration = std::time::Duration::from_millis(750);

impl Cache {
    async fn overview(
        &self,
        state: &AppState,
    ) -> crate::store::StoreResult<Arc<pages::OverviewData>> {
        // Held while reading: viewers arriving meanwhile wait for this read instead of making their own.
        let mut slot = self.overview.lock().await;
        if let Some((at, data)) = slot.as_ref()
            && at.elapsed() < OVERVIEW_FRESH
        {
            return Ok(data.clone());
        }
        let data = Arc::new(pages::OverviewData::load(state).await?);
        *slot = Some((std::time::Instant::now(), data.clone()));
        Ok(data)
    }
}

#[poem::handler]
async fn overview(req: &Request, state: Data<&AppState>, cache: Data<&Arc<Cache>>) -> Response {
    let v = match viewer(req) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let data = try_page!(cache.overview(&state).await, v);
    render(req, &v, pages::overview(&data))
}

#[derive(Deserialize, Default)]
struct TasksQuery {
    status: Option<String>,
    problem_id: Option<String>,
    worker_id: Option<String>,
    batch_id: Option<String>,
    /// Where the page starts: after the task of this cursor (`pages::cursor`), newest first.
    before: Option<String>,
}

/// Tasks a page of the task list shows.
pub const TASKS_PER_PAGE: u64 = 50;

#[poem::handler]
async fn tasks_page(req: &Request, state: Data<&AppState>, q: Query<TasksQuery>) -> Response {
    let v = match viewer(req) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let q = q.0;
    let blank = |s: Option<String>| s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let mut filters = pages::TaskFilters {
        status: blank(q.status),
        problem_id: blank(q.problem_id),
        worker_id: blank(q.worker_id),
        batch_id: blank(q.batch_id),
        before: None,
        problems: Vec::new(),
    };
    match blank(q.before).map(|c| pages::parse_cursor(&c)) {
        Some(Some(c)) => filters.before = Some(c),
        Some(None) => filters
            .problems
            .push("that page does not exist (a malformed `before`)".to_owned()),
        None => {}
    }
    let status = match filters.status.as_deref().map(str::parse::<TaskStatus>) {
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => {
            filters.problems.push("unknown status".to_owned());
            None
        }
        None => None,
    };
    let batch_id = match filters.batch_id.as_deref().map(Uuid::parse_str) {
        Some(Ok(b)) => Some(b),
        Some(Err(_)) => {
            filters
                .problems
                .push("a batch id is a UUID, e.g. 0f8e…".to_owned());
            None
        }
        None => None,
    };
    let rows = if filters.problems.is_empty() {
        let filter = crate::store::tasks::ListFilter {
            status,
            problem_id: filters.problem_id.clone(),
            worker_id: filters.worker_id.clone(),
            batch_id,
            ..Default::default()
        };
        // One more than shown: whether an older page exists.
        try_page!(
            crate::store::tasks::page_before(
                &state.db,
                &filter,
                filters.before,
                TASKS_PER_PAGE + 1
            )
            .await,
            v
        )
    } else {
        Vec::new()
    };
    render(req, &v, pages::tasks(&filters, rows))
}

#[derive(Deserialize, Default)]
struct TaskQuery {
    level: Option<String>,
    notice: Option<String>,
}

#[poem::handler]
async fn task_page(
    req: &Request,
    state: Data<&AppState>,
    id: Path<String>,
    q: Query<TaskQuery>,
) -> Response {
    let v = match viewer(req) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let id = match path_id(&id.0, "task") {
        Ok(id) => id,
        Err(e) => return error_page(e, Some(&v)),
    };
    let level =
        q.0.level
            .as_deref()
            .and_then(|l| l.parse::<LogLevel>().ok());
    let data = try_page!(pages::TaskData::load(&state, id, level).await, v);
    render(
        req,
        &v,
        pages::task(&data, &v, level, pages::notice(q.0.notice.as_deref())),
    )
}

#[derive(Deserialize, Default)]
struct NoticeQuery {
    notice: Option<String>,
}

#[poem::handler]
async fn workers_page(req: &Request, state: Data<&AppState>, q: Query<NoticeQuery>) -> Response {
    let v = match viewer(req) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let data = try_page!(pages::WorkersData::load(&state).await, v);
    render(
        req,
        &v,
        pages::workers(&data, &v, pages::notice(q.0.notice.as_deref())),
    )
}

#[derive(Deserialize, Default)]
struct PageQuery {
    #[serde(default)]
    page: u64,
}

/// Batches a page of the batch list shows.
pub const BATCHES_PER_PAGE: u64 = 50;

#[poem::handler]
async fn batches_page(req: &Request, state: Data<&AppState>, q: Query<PageQuery>) -> Response {
    let v = match viewer(req) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let page = q.0.page.min(1_000_000);
    let data = try_page!(pages::BatchesData::load(&state, page).await, v);
    render(req, &v, pages::batches(&data, page))
}

#[derive(Deserialize)]
struct BoardQuery {
    rows: Option<String>,
    cols: Option<String>,
}

#[poem::handler]
async fn leaderboard_page(req: &Request, state: Data<&AppState>, q: Query<BoardQuery>) -> Response {
    use crate::leaderboard::{Cols, Rows};
    let v = match viewer(req) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let rows = match q.0.rows.as_deref() {
        Some("model") => Rows::Model,
        _ => Rows::Agent,
    };
    let cols = match q.0.cols.as_deref() {
        Some("problem_family") => Cols::ProblemFamily,
        Some("task_type") => Cols::TaskType,
        _ => Cols::ProblemId,
    };
    let data = try_page!(pages::BoardData::load(&state, rows, cols).await, v);
    render(req, &v, pages::board(&data))
}

#[poem::handler]
async fn batch_page(
    req: &Request,
    state: Data<&AppState>,
    id: Path<String>,
    q: Query<NoticeQuery>,
) -> Response {
    let v = match viewer(req) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let id = match path_id(&id.0, "batch") {
        Ok(id) => id,
        Err(e) => return error_page(e, Some(&v)),
    };
    // The heat map reads every finished run of the batch: drawn with the page, not at each live refresh.
    let data = try_page!(
        pages::BatchData::load(&state, id, !is_fragment(req)).await,
        v
    );
    render(
        req,
        &v,
        pages::batch(&data, &v, pages::notice(q.0.notice.as_deref())),
    )
}

// ---------------------------------------------------------------------------------------------------------
// Actions: forms that post here, checked, then back to the page (303) with a notice.

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The viewer of a form post that needs `role`, or the answer instead.
fn actor(req: &Request, csrf: &str, role: Role) -> Result<Viewer, Refusal> {
    let v = viewer(req)?;
    check_form(req, csrf)?;
    if let Err(e) = v.caller.require(role) {
        return Err(Box::new(error_page(e, Some(&v))));
    }
    Ok(v)
}

#[poem::handler]
async fn cancel_task(
    req: &Request,
    state: Data<&AppState>,
    id: Path<String>,
    form: Form<CsrfForm>,
) -> Response {
    cancel(req, &state, Cancel::Task, &id.0, &form.csrf).await
}

#[poem::handler]
async fn cancel_batch(
    req: &Request,
    state: Data<&AppState>,
    id: Path<String>,
    form: Form<CsrfForm>,
) -> Response {
    cancel(req, &state, Cancel::Batch, &id.0, &form.csrf).await
}

/// What a Cancel button cancels.
#[derive(Clone, Copy)]
enum Cancel {
    Task,
    Batch,
}

/// A Cancel button's post: the same operation as the API's, then back to the page with a notice.
async fn cancel(
    req: &Request,
    state: &AppState,
    what: Cancel,
    raw_id: &str,
    csrf: &str,
) -> Response {
    let v = match actor(req, csrf, Role::Submit) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let (noun, page, notice) = match what {
        Cancel::Task => ("task", "tasks", "cancelled"),
        Cancel::Batch => ("batch", "batches", "batch_cancelled"),
    };
    let cancelled = async {
        let id = path_id(raw_id, noun)?;
        match what {
            Cancel::Task => crate::service::cancel_task(state, id).await.map(|_| ())?,
            Cancel::Batch => crate::service::cancel_batch(state, id).await.map(|_| ())?,
        }
        Ok::<_, ApiError>(id)
    };
    match cancelled.await {
        Ok(id) => see_other(&format!("/ui/{page}/{id}?notice={notice}")),
        Err(e) => error_page(e, Some(&v)),
    }
}

#[derive(Deserialize)]
struct InternalForm {
    #[serde(default)]
    csrf: String,
    num_workers: Option<String>,
}

#[poem::handler]
async fn internal_action(
    req: &Request,
    state: Data<&AppState>,
    action: Path<String>,
    form: Form<InternalForm>,
) -> Response {
    let v = match actor(req, &form.csrf, Role::Admin) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let supervisor = &state.supervisor;
    let notice = match action.0.as_str() {
        "scale" => {
            let n = form
                .num_workers
                .as_deref()
                .map(str::trim)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n <= crate::supervisor::MAX_INTERNAL_WORKERS);
            let Some(n) = n else {
                return error_page(
                    ApiError::validation(format!(
                        "the number of internal workers is a whole number from 0 to {}",
                        crate::supervisor::MAX_INTERNAL_WORKERS
                    )),
                    Some(&v),
                );
            };
            supervisor.scale(n).await;
            "scaled"
        }
        "stop" => {
            supervisor.stop(false).await;
            "stopped"
        }
        "drain" => {
            supervisor.stop(true).await;
            "draining"
        }
        "start" => match supervisor.start().await {
            Ok(_) => "started",
            Err(e) => {
                return error_page(
                    ApiError::conflict("workers_already_running", e.to_string()),
                    Some(&v),
                );
            }
        },
        _ => return not_found_response(),
    };
    see_other(&format!("/ui/workers?notice={notice}"))
}

// ---------------------------------------------------------------------------------------------------------
// Sessions

#[derive(Deserialize, Default)]
struct LoginQuery {
    next: Option<String>,
}

/// Where to go after logging in: only a page of the dashboard (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if (n == "/ui" || n.starts_with("/ui/") || n.starts_with("/ui?"))
                && !n.contains("//")
                && !n.contains('\\')
                && !n.starts_with("/ui/login") =>
        {
            n.to_owned()
        }
        _ => "/ui".to_owned(),
    }
}

fn login_viewer(req: &Request) -> Viewer {
    Viewer::of(Caller::Anonymous, req)
}

#[poem::handler]
fn login_form(req: &Request, state: Data<&AppState>, q: Query<LoginQuery>) -> Response {
    let next = safe_next(q.0.next.as_deref());
    if !state.auth.enabled() {
        return see_other(&next);
    }
    let v = login_viewer(req);
    page_response(StatusCode::OK, pages::login(&v, &next, None), Some(&v))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
    next: Option<String>,
}

#[poem::handler]
fn login(req: &Request, state: Data<&AppState>, form: Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref());
    if !state.auth.enabled() {
        return see_other(&next);
    }
    if let Err(r) = check_form(req, &form.csrf) {
        return *r;
    }
    let token = form.token.trim();
    let v = login_viewer(req);
    let refuse = |why: &str| {
        page_response(
            StatusCode::UNAUTHORIZED,
            pages::login(&v, &next, Some(why)),
            Some(&v),
        )
    };
    // A token is visible ASCII (anything else could not go in a cookie, and is no token of ours).
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return refuse("That is not a token: tokens look like tex_ and 64 hex digits.");
    }
    match state.auth.caller(Some(&format!("Bearer {token}"))) {
        Caller::Token(p) if p.role.allows(Role::Read) => {
            tracing::info!(token = %p.name, "dashboard login");
            let mut resp = see_other(&next);
            resp.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(req, SESSION_COOKIE, token, "/", SESSION_SECONDS),
            );
            resp
        }
        Caller::Token(p) => refuse(&format!(
            "Token `{}` has role `{}`, which cannot read the dashboard (it needs read, submit or admin).",
            p.name, p.role
        )),
        _ => refuse("This token is not valid (unknown, revoked or mistyped)."),
    }
}

#[poem::handler]
fn logout(req: &Request, form: Form<CsrfForm>) -> Response {
    if let Err(r) = check_form(req, &form.csrf) {
        return *r;
    }
    let mut resp = see_other("/ui/login");
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(req, SESSION_COOKIE, "", "/", 0),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_in_the_dashboard() {
        assert_eq!(
            safe_next(Some("/ui/tasks?status=failed")),
            "/ui/tasks?status=failed"
        );
        assert_eq!(safe_next(Some("/ui")), "/ui");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/ui//evil.example",
            "/ui\\evil",
            "/api/v1/tasks",
            "/uix",
            "/ui/login?next=/ui",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui");
    }

    #[test]
    fn cookies_parse() {
        let req = Request::builder()
            .header(header::COOKIE, "a=1; tex_session=tex_abc; tex_csrf=")
            .finish();
        assert_eq!(session_token(&req), Some("tex_abc"));
        assert_eq!(cookie(&req, "a"), Some("1"));
        assert_eq!(cookie(&req, CSRF_COOKIE), None);
    }
}
