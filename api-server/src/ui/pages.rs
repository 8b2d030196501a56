//! The dashboard's pages: what each reads (`…Data::load`, through the same store as the API) and how it is
//! drawn (maud, which escapes every value it interpolates). Each page has a live part (`Page::live`), which is
//! all the page's `?fragment=1` answers: the script swaps it in when the page's stream says something moved.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use task_executor_shared::{FailureKind, LogLevel, Role, TaskStatus, WorkerStatus, api};
use uuid::Uuid;

use super::{BATCHES_PER_PAGE, TASKS_PER_PAGE, Viewer, charts};
use crate::{
    leaderboard::{self, Cols, Rows},
    results,
    state::AppState,
    store::{
        self, StoreResult,
        batches::{self, ProblemFigures},
        entity::{task, task_log, worker},
        logs, stats,
        tasks::{self, ListFilter},
        workers,
    },
    supervisor::InternalWorker,
};

/// A page: its title, the navigation entry it belongs to, how it stays live, and its two parts.
pub struct Page {
    pub title: String,
    pub nav: &'static str,
    /// The event stream whose events refresh the live part (`data-events`).
    pub events: Option<String>,
    /// Also refresh every this many milliseconds (what no event announces: heartbeats, ages).
    pub every_ms: Option<u32>,
    /// Shortest time between two refreshes, in milliseconds.
    pub throttle_ms: u32,
    /// Above the live part, not refreshed (filters, forms being typed in).
    pub head: Markup,
    pub live: Markup,
    /// Below the live part, not refreshed (a log followed entry by entry).
    pub tail: Markup,
}

impl Page {
    fn new(title: impl Into<String>, nav: &'static str, live: Markup) -> Self {
        Page {
            title: title.into(),
            nav,
            events: None,
            every_ms: None,
            throttle_ms: 1000,
            head: html! {},
            live,
            tail: html! {},
        }
    }
}

/// What a notice code (after an action) says.
pub fn notice(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "cancelled" => "The task was cancelled.",
        "batch_cancelled" => "The batch's unfinished tasks were cancelled.",
        "scaled" => "The internal workers were scaled.",
        "stopped" => {
            "The internal workers were stopped; their running tasks went back to the queue."
        }
        "draining" => {
            "The internal workers are draining: they finish their tasks and claim no more."
        }
        "started" => "The internal workers were started.",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Small pieces

fn short(id: &Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

fn time(at: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) title=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

/// A duration as people say it: `42 s`, `3 min`, `5 h 2 min`, `3 d`.
pub fn span(d: Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => match (s % 3600) / 60 {
            0 => format!("{} h", s / 3600),
            m => format!("{} h {m} min", s / 3600),
        },
        _ => format!("{} d", s / 86400),
    }
}

fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) title=(at.format("%Y-%m-%d %H:%M:%S UTC")) { (span(now - at)) " ago" } }
}

fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2} s")
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else {
        span(Duration::milliseconds((s * 1000.0) as i64))
    }
}

pub fn status_badge(s: TaskStatus) -> Markup {
    html! { span class={ "badge status-" (s) } data-status=(s) { (s) } }
}

fn worker_badge(s: WorkerStatus) -> Markup {
    html! { span class={ "badge worker-" (s) } { (s) } }
}

fn csrf_field(v: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.csrf); }
}

/// A button that posts a form (with the form token); `confirm` asks first (by script).
fn action(v: &Viewer, to: &str, label: &str, class: &str, confirm: Option<&str>) -> Markup {
    html! {
        form method="post" action=(to) class="inline" data-confirm=[confirm] {
            (csrf_field(v))
            button type="submit" class=(class) { (label) }
        }
    }
}

fn notice_box(n: Option<&str>) -> Markup {
    html! { @if let Some(n) = n { p class="notice" role="status" { (n) } } }
}

fn empty_row(cols: u32, text: Markup) -> Markup {
    html! { tr class="empty" { td colspan=(cols) { (text) } } }
}

/// The first line of a task's error, if its result has one.
fn first_error_line(t: &task::Model) -> Option<String> {
    let e = t.result.as_ref()?.get("error")?;
    let text = match e {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())?
        .trim()
        .to_owned();
    Some(if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line
    })
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------
// Layout

/// A page's `<head>`: the stylesheet, and the script where the page is live.
fn head(title: &str, script: bool) -> Markup {
    let version = super::ASSET_VERSION.as_str();
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) " · AIOpsLab Task Executor" }
            link rel="icon" href="data:,";
            link rel="stylesheet" href={ "/ui/assets/app.css?v=" (version) };
            @if script { script src={ "/ui/assets/app.js?v=" (version) } defer {} }
        }
    }
}

pub fn layout(v: &Viewer, page: &Page) -> Markup {
    let nav = [
        ("overview", "/ui", "Overview"),
        ("tasks", "/ui/tasks", "Tasks"),
        ("workers", "/ui/workers", "Workers"),
        ("batches", "/ui/batches", "Batches"),
        ("leaderboard", "/ui/leaderboard", "Leaderboard"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&page.title, true))
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/ui" { "AIOpsLab Task Executor" }
                    nav aria-label="Main" {
                        ul {
                            @for (key, href, label) in nav {
                                li {
                                    a href=(href) aria-current=[(page.nav == key).then_some("page")] { (label) }
                                }
                            }
                            li { a href="/docs" { "API" } }
                        }
                    }
                    div class="who" {
                        @match v.who() {
                            Some((name, role)) => {
                                span { (name) " · " (role) }
                                form method="post" action="/ui/logout" class="inline" {
                                    (csrf_field(v))
                                    button type="submit" class="link" { "Log out" }
                                }
                            }
                            None => span title="No API token exists, so the server listens on loopback only" {
                                "No authentication (loopback)"
                            },
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (page.title) }
                    (page.head)
                    div id="live" data-live
                        data-events=[page.events.as_deref()]
                        data-every=[page.every_ms]
                        data-throttle=(page.throttle_ms)
                        aria-live="polite" {
                        (page.live)
                    }
                    (page.tail)
                }
            }
        }
    }
}

/// A page that only says something (an error, a refusal).
pub fn message_page(title: &str, text: &str, with_nav: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body {
                header class="top" { a class="brand" href="/ui" { "AIOpsLab Task Executor" } }
                main id="main" {
                    h1 { (title) }
                    p class="message" { (text) }
                    @if with_nav { p { a href="/ui" { "Back to the overview" } } }
                }
            }
        }
    }
}

pub fn login(v: &Viewer, next: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in", false))
            body {
                header class="top" { a class="brand" href="/ui" { "AIOpsLab Task Executor" } }
                main id="main" class="narrow" {
                    h1 { "Log in" }
                    p { "This server asks for an API token (" code { "api-server token create NAME read" } "). It is kept in this browser as an HttpOnly cookie until you log out." }
                    @if let Some(e) = error { p class="error" role="alert" { (e) } }
                    form method="post" action="/ui/login" class="stack" {
                        (csrf_field(v))
                        input type="hidden" name="next" value=(next);
                        label for="token" { "API token" }
                        input id="token" name="token" type="password" autocomplete="current-password" required autofocus spellcheck="false" placeholder="tex_…";
                        button type="submit" class="primary" { "Log in" }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Overview

pub struct OverviewData {
    now: DateTime<Utc>,
    counts: HashMap<TaskStatus, i64>,
    oldest_pending: Option<DateTime<Utc>>,
    per_minute: Vec<stats::MinuteCount>,
    workers: Vec<(worker::Model, WorkerStatus, Vec<Uuid>)>,
    failures: Vec<task::Model>,
}

impl OverviewData {
    pub async fn load(state: &AppState) -> StoreResult<Self> {
        let db = &state.db;
        let now = store::now();
        Ok(OverviewData {
            now,
            counts: state.counts.get(db).await?,
            oldest_pending: stats::oldest_pending(db).await?,
            per_minute: stats::finished_per_minute(db, now - Duration::minutes(60)).await?,
            workers: workers::list_with_status(db, state.dispatcher.lease.heartbeat_timeout)
                .await?,
            failures: stats::recent_failures(db, now - Duration::hours(24), 10).await?,
        })
    }
}

pub fn overview(d: &OverviewData) -> Page {
    let by_worker_status: BTreeMap<String, usize> =
        d.workers.iter().fold(BTreeMap::new(), |mut m, (_, s, _)| {
            *m.entry(s.to_string()).or_default() += 1;
            m
        });
    let degraded: Vec<_> = d
        .workers
        .iter()
        .filter(|(_, s, _)| *s == WorkerStatus::Degraded)
        .collect();
    let live = html! {
        section aria-labelledby="h-queue" {
            h2 id="h-queue" { "Tasks" }
            div class="cards" {
                @for s in TaskStatus::all() {
                    a class={ "card status-" (s) } href={ "/ui/tasks?status=" (s) } data-count=(s) {
                        span class="n" { (d.counts.get(&s).copied().unwrap_or(0)) }
                        span class="label" { (s) }
                    }
                }
                div class="card" {
                    span class="n" id="oldest-pending" {
                        @match d.oldest_pending { Some(at) => (span(d.now - at)), None => "—" }
                    }
                    span class="label" { "oldest pending" }
                }
            }
        }
        section aria-labelledby="h-throughput" {
            h2 id="h-throughput" { "Throughput, last hour" }
            (charts::throughput(&d.per_minute, d.now))
        }
        section aria-labelledby="h-workers" {
            h2 id="h-workers" { "Workers" }
            @if d.workers.is_empty() {
                p class="empty" { "No worker has registered yet. Start " code { "worker-daemon" } " on a cluster host, or internal workers on the " a href="/ui/workers" { "Workers" } " page." }
            } @else {
                ul class="chips" {
                    @for (s, n) in &by_worker_status {
                        li { span class={ "badge worker-" (s) } { (s) } " " (n) }
                    }
                }
                @for (w, _, _) in &degraded {
                    p class="warning" {
                        strong { (w.id) } " is degraded: " (w.status_reason.as_deref().unwrap_or("no reason given"))
                    }
                }
            }
        }
        section aria-labelledby="h-failures" {
            h2 id="h-failures" { "Recent failures" }
            div class="scroll" {
                table {
                    thead { tr { th { "Task" } th { "Problem" } th { "Status" } th { "Ended" } th { "Error" } } }
                    tbody {
                        @for t in &d.failures {
                            tr {
                                td { a href={ "/ui/tasks/" (t.id) } { code { (short(&t.id)) } } }
                                td { (t.problem_id) }
                                td { (status_badge(t.status)) }
                                td { @if let Some(at) = t.completed_at { (ago(at, d.now)) } }
                                td class="error-line" { (first_error_line(t).unwrap_or_default()) }
                            }
                        }
                        @if d.failures.is_empty() {
                            (empty_row(5, html! { "No task failed or timed out in the last 24 hours." }))
                        }
                    }
                }
            }
        }
    };
    let mut page = Page::new("Overview", "overview", live);
    page.events = Some("/api/v1/events".to_owned());
    page.every_ms = Some(5000);
    page
}

// ---------------------------------------------------------------------------------------------------------
// Tasks

/// A page boundary in the task list: the task's creation time (microseconds) and id.
fn cursor(t: &task::Model) -> String {
    format!("{}_{}", t.created_at.timestamp_micros(), t.id.simple())
}

pub fn parse_cursor(c: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = c.split_once('_')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

pub struct TaskFilters {
    pub status: Option<String>,
    pub problem_id: Option<String>,
    pub worker_id: Option<String>,
    pub batch_id: Option<String>,
    /// The page starts after this task (creation time, id); none: the newest.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// What is wrong with the filters, if anything.
    pub problems: Vec<String>,
}

impl TaskFilters {
    fn query(&self, before: Option<&task::Model>) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("status", &self.status),
            ("problem_id", &self.problem_id),
            ("worker_id", &self.worker_id),
            ("batch_id", &self.batch_id),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", super::urlencode(v)));
            }
        }
        if let Some(t) = before {
            parts.push(format!("before={}", cursor(t)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }

    fn any(&self) -> bool {
        self.status.is_some()
            || self.problem_id.is_some()
            || self.worker_id.is_some()
            || self.batch_id.is_some()
    }
}

pub fn tasks(f: &TaskFilters, mut rows: Vec<task::Model>) -> Page {
    let now = store::now();
    let more = rows.len() as u64 > TASKS_PER_PAGE;
    rows.truncate(TASKS_PER_PAGE as usize);
    let head = html! {
        form method="get" action="/ui/tasks" class="filters" role="search" {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in TaskStatus::all() {
                        option value=(s) selected[f.status.as_deref() == Some(&s.to_string())] { (s) }
                    }
                }
            }
            label { "Problem " input name="problem_id" value=[f.problem_id.as_deref()] placeholder="problem id" size="24"; }
            label { "Worker " input name="worker_id" value=[f.worker_id.as_deref()] placeholder="worker id" size="14"; }
            label { "Batch " input name="batch_id" value=[f.batch_id.as_deref()] placeholder="batch id" size="14"; }
            button type="submit" { "Filter" }
            @if f.any() { a href="/ui/tasks" { "Clear" } }
        }
        @for p in &f.problems { p class="error" role="alert" { (p) } }
    };
    let live = html! {
        div class="scroll" {
            table class="tasks" {
                thead { tr { th { "Task" } th { "Problem" } th { "Status" } th { "Worker" } th { "Attempt" } th { "Created" } th { "Batch" } } }
                tbody {
                    @for t in &rows {
                        tr data-task-id=(t.id) {
                            td { a href={ "/ui/tasks/" (t.id) } { code { (short(&t.id)) } } }
                            td { (t.problem_id) }
                            td class="status-cell" { (status_badge(t.status)) }
                            td { (t.worker_id.as_deref().unwrap_or("—")) }
                            td { (t.attempt) }
                            td { (ago(t.created_at, now)) }
                            td { @if let Some(b) = t.batch_id { a href={ "/ui/batches/" (b) } { code { (short(&b)) } } } @else { "—" } }
                        }
                    }
                    @if rows.is_empty() {
                        (empty_row(7, if f.any() || f.before.is_some() {
                            html! { "No tasks match these filters." }
                        } else {
                            html! { "No tasks yet. Queue one with " code { "task-executor submit PROBLEM_ID" } " or " code { "POST /api/v1/tasks" } "." }
                        }))
                    }
                }
            }
        }
        nav class="pager" aria-label="Pages" {
            @if f.before.is_some() { a href={ "/ui/tasks" (f.query(None)) } rel="first" { "← Newest" } }
            @if let (true, Some(last)) = (more, rows.last()) { a href={ "/ui/tasks" (f.query(Some(last))) } rel="next" { "Older →" } }
        }
    };
    let mut page = Page::new("Tasks", "tasks", live);
    page.head = head;
    let mut events = "/api/v1/events".to_owned();
    if let Some(b) = f.batch_id.as_deref().and_then(|b| Uuid::parse_str(b).ok()) {
        events.push_str(&format!("?batch_id={b}"));
    }
    page.events = Some(events);
    page.every_ms = Some(15000);
    page
}

// ---------------------------------------------------------------------------------------------------------
// One task

pub struct TaskData {
    task: task::Model,
    timeline: Vec<task_log::Model>,
    log: Vec<task_log::Model>,
    log_total: u64,
    /// The newest entry of the whole log: where the live stream resumes.
    last_seq: i64,
}

/// Log entries the task page shows at first (older ones: the API).
const LOG_SHOWN: u64 = 2000;

impl TaskData {
    pub async fn load(state: &AppState, id: Uuid, level: Option<LogLevel>) -> StoreResult<Self> {
        let db = &state.db;
        // The log up to a point, then the task: a task still unfinished then will stream everything after
        // that point (nothing twice, nothing missed); one finished meanwhile wrote its last entries already,
        // so the log is read again up to its end (a finished task's log does not grow).
        let mut last_seq = logs::last_entry_at(db, id, i64::MAX).await?;
        let (mut log, mut log_total) =
            logs::last_entries(db, id, level, LOG_SHOWN, last_seq).await?;
        let task = tasks::get(db, id).await?;
        if task.status.is_terminal() {
            let end = logs::last_entry_at(db, id, i64::MAX).await?;
            if end != last_seq {
                last_seq = end;
                (log, log_total) = logs::last_entries(db, id, level, LOG_SHOWN, end).await?;
            }
        }
        Ok(TaskData {
            timeline: logs::state_changes(db, id).await?,
            task,
            log,
            log_total,
            last_seq,
        })
    }
}

fn metrics_table(result: &Value) -> Markup {
    let Some(metrics) = result.get("metrics").and_then(Value::as_object) else {
        return html! {};
    };
    html! {
        table class="kv" {
            caption { "Metrics" }
            tbody {
                @for (k, v) in metrics {
                    tr { th scope="row" { (k) } td { @match v { Value::String(s) => (s), other => (other.to_string()) } } }
                }
            }
        }
    }
}

pub fn task(d: &TaskData, v: &Viewer, level: Option<LogLevel>, notice: Option<&str>) -> Page {
    let t = &d.task;
    let now = store::now();
    let finished = t.status.is_terminal();
    let live = html! {
        (notice_box(notice))
        div class="task-head" {
            span class="big" id="task-status" { (status_badge(t.status)) }
            @if !finished && v.may(Role::Submit) {
                (action(v, &format!("/ui/tasks/{}/cancel", t.id), "Cancel task", "danger", Some("Cancel this task? A running run is stopped.")))
            }
        }
        dl class="facts" {
            dt { "Task" } dd { code { (t.id) } }
            dt { "Problem" } dd { a href={ "/ui/tasks?problem_id=" (super::urlencode(&t.problem_id)) } { (t.problem_id) } }
            dt { "Priority" } dd { (t.priority) }
            dt { "Attempt" } dd { (t.attempt) }
            @if let Some(k) = FailureKind::of(t.status, t.result.as_ref()) {
                dt { "Failure kind" } dd id="task-failure-kind" { (k.as_str()) }
            }
            dt { "Worker" } dd { @match &t.worker_id { Some(w) => a href={ "/ui/tasks?worker_id=" (super::urlencode(w)) } { (w) }, None => "—" } }
            dt { "Batch" } dd { @match t.batch_id { Some(b) => a href={ "/ui/batches/" (b) } { code { (b) } }, None => "—" } }
            dt { "Created by" } dd { (t.created_by.as_deref().unwrap_or("—")) }
            dt { "Created" } dd { (time(t.created_at)) }
            @if let Some(at) = t.started_at { dt { "Started" } dd { (time(at)) } }
            @if let Some(at) = t.completed_at { dt { "Ended" } dd { (time(at)) " (" (span(at - t.started_at.unwrap_or(t.created_at))) ")" } }
            @if let (Some(at), false) = (t.lease_expires_at, finished) { dt { "Lease until" } dd { (time(at)) } }
        }
        section aria-labelledby="h-timeline" {
            h2 id="h-timeline" { "Timeline" }
            ol class="timeline" {
                @for e in &d.timeline {
                    li {
                        @if let Some(s) = e.status { (status_badge(s)) }
                        " " (time(e.timestamp))
                        @if let Some(a) = e.attempt { " · attempt " (a) }
                        " — " (e.message)
                    }
                }
                @if d.timeline.is_empty() { li { "Created " (ago(t.created_at, now)) } }
            }
        }
        section aria-labelledby="h-result" {
            h2 id="h-result" { "Result" }
            @match &t.result {
                Some(r) => {
                    @if let Some(ok) = r.get("success").and_then(Value::as_bool) {
                        p { "Success: " strong class=(if ok { "ok" } else { "bad" }) { (if ok { "yes" } else { "no" }) } }
                    }
                    @if let Some(e) = first_error_line(t) { p class="error" { (e) } }
                    (metrics_table(r))
                    @if let Some(Value::Object(p)) = r.get("provenance") {
                        h3 { "Provenance" }
                        dl class="facts" id="task-provenance" {
                            @for (k, v) in p {
                                dt { (k) }
                                dd { @match v { Value::String(s) => (s), Value::Null => "—", other => (other.to_string()) } }
                            }
                        }
                    }
                    @if let Some(out) = r.get("output").and_then(Value::as_str) { h3 { "Output" } pre { (out) } }
                    details { summary { "Whole result (JSON)" } pre { (pretty(r)) } }
                }
                None => p class="empty" { @if finished { "No result was recorded." } @else { "No result yet: the task is " (t.status) "." } }
            }
        }
        details {
            summary { "Parameters" }
            pre { (pretty(&t.parameters)) }
        }
    };
    let shown = d.log.len() as u64;
    let tail = html! {
        section aria-labelledby="h-log" class="log-section" {
            h2 id="h-log" { "Log" }
            form method="get" class="filters" data-autosubmit {
                label { "Level "
                    select name="level" id="level" {
                        option value="" selected[level.is_none()] { "all" }
                        @for l in LogLevel::all() {
                            option value=(l) selected[level == Some(l)] { (l) " and worse" }
                        }
                    }
                }
                noscript { button type="submit" { "Show" } }
                @if !finished { span class="following" id="following" { "following live" } }
            }
            @if d.log_total > shown {
                p class="muted" { "The last " (shown) " of " (d.log_total) " entries; all of them: " a href={ "/api/v1/tasks/" (t.id) "/logs?limit=10000" } { "the log as JSON" } "." }
            }
            div class="scroll" {
                table class="log" id="log"
                    data-min-severity=(level.map(LogLevel::severity).unwrap_or(0))
                    data-events=[(!finished).then(|| format!("/api/v1/tasks/{}/events?after_seq={}", t.id, d.last_seq))] {
                    thead { tr { th { "Time" } th { "Level" } th { "Attempt" } th { "Message" } } }
                    tbody {
                        @for e in &d.log { (log_row(e)) }
                        @if d.log.is_empty() { (empty_row(4, html! { "Nothing logged" @if level.is_some() { " at this level" } " yet." })) }
                    }
                }
            }
        }
    };
    let mut page = Page::new(format!("Task {}", short(&t.id)), "tasks", live);
    page.tail = tail;
    if !finished {
        // The log's stream refreshes the rest on each state change; this only renews the lease and ages.
        page.every_ms = Some(10_000);
    }
    // The log's own stream (in the tail) refreshes the live part on each state change.
    page
}

fn log_row(e: &task_log::Model) -> Markup {
    html! {
        tr class={ "level-" (e.level) } data-seq=(e.id) {
            td class="nowrap" { (e.timestamp.format("%H:%M:%S%.3f")) }
            td { span class={ "level level-" (e.level) } { (e.level) } }
            td { (e.attempt.map(|a| a.to_string()).unwrap_or_default()) }
            td class="msg" {
                (e.message)
                @if let Some(c) = e.context.as_ref().filter(|c| c.as_object().is_some_and(|o| !o.is_empty())) {
                    details { summary { "context" } pre { (pretty(c)) } }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Workers

pub struct WorkersData {
    now: DateTime<Utc>,
    workers: Vec<(worker::Model, WorkerStatus, Vec<Uuid>)>,
    internal_running: bool,
    internal: Vec<InternalWorker>,
    configured: u32,
}

impl WorkersData {
    pub async fn load(state: &AppState) -> StoreResult<Self> {
        let (internal_running, internal) = state.supervisor.status();
        Ok(WorkersData {
            now: store::now(),
            workers: workers::list_with_status(&state.db, state.dispatcher.lease.heartbeat_timeout)
                .await?,
            internal_running,
            internal,
            configured: state.config.num_internal_workers,
        })
    }
}

/// The kind clusters a worker said it runs problems on (`clusters` from a daemon, `cluster` from an internal
/// worker).
fn clusters_of(w: &worker::Model) -> Vec<String> {
    let text = |c: &Value| match c {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let Some(m) = w.metadata.as_ref() else {
        return Vec::new();
    };
    match (m.get("clusters"), m.get("cluster")) {
        (Some(Value::Array(a)), _) => a.iter().map(text).collect(),
        (_, Some(c)) if !c.is_null() => vec![text(c)],
        _ => Vec::new(),
    }
}

/// A string the worker's metadata holds under `key`.
fn meta<'a>(w: &'a worker::Model, key: &str) -> Option<&'a str> {
    w.metadata.as_ref()?.get(key)?.as_str()
}

pub fn workers(d: &WorkersData, v: &Viewer, notice: Option<&str>) -> Page {
    let active = d
        .internal
        .iter()
        .filter(|w| w.status != WorkerStatus::Stopping)
        .count();
    let live = html! {
        (notice_box(notice))
        section aria-labelledby="h-registered" {
            h2 id="h-registered" { "Registered workers" }
            div class="scroll" {
                table class="workers" {
                    thead { tr { th { "Worker" } th { "Status" } th { "Backend" } th { "Capabilities" } th { "Clusters" } th { "Current tasks" } th { "Last heartbeat" } th { "Done / failed" } } }
                    tbody {
                        @for (w, s, held) in &d.workers {
                            tr data-worker-id=(w.id) {
                                td { code { (w.id) } }
                                td {
                                    (worker_badge(*s))
                                    @if let (WorkerStatus::Degraded, Some(r)) = (s, &w.status_reason) { div class="reason" { (r) } }
                                }
                                td {
                                    (w.backend_type)
                                    @if let Some(r) = meta(w, "runner") { " · " (r) }
                                    @if let Some(h) = meta(w, "hostname") { div class="muted" { "on " (h) } }
                                }
                                td {
                                    (w.max_parallel_tasks) " at once"
                                    @let globs: Vec<String> = serde_json::from_value(w.supported_problems.clone()).unwrap_or_default();
                                    @if !globs.is_empty() { div class="muted" { "problems: " (globs.join(", ")) } }
                                }
                                td { @let c = clusters_of(w); @if c.is_empty() { "—" } @else { (c.join(", ")) } }
                                td {
                                    @for id in held { a href={ "/ui/tasks/" (id) } { code { (short(id)) } } " " }
                                    @if held.is_empty() { "—" }
                                }
                                td { (ago(w.last_heartbeat, d.now)) }
                                td { (w.tasks_completed) " / " (w.tasks_failed) }
                            }
                        }
                        @if d.workers.is_empty() {
                            (empty_row(8, html! { "No worker has registered yet. Start " code { "worker-daemon" } " on a cluster host, or internal workers below." }))
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-internal" {
            h2 id="h-internal" { "Internal workers of this server" }
            p {
                @if d.internal_running { "Running: " strong id="internal-count" { (active) } " active" } @else { "Stopped" strong id="internal-count" hidden { "0" } }
                " (configured: " (d.configured) ")."
            }
            @if !d.internal.is_empty() {
                ul class="chips" {
                    @for w in &d.internal {
                        li data-internal-id=(w.id) {
                            code { (w.id) } " " (worker_badge(w.status))
                            @if let Some(t) = w.current_task { " " a href={ "/ui/tasks/" (t) } { code { (short(&t)) } } }
                        }
                    }
                }
            }
        }
    };
    let head = if v.may(Role::Admin) {
        html! {
            section class="controls" aria-label="Internal worker controls" {
                form method="post" action="/ui/workers/internal/scale" class="inline" {
                    (csrf_field(v))
                    label { "Internal workers "
                        input type="number" name="num_workers" min="0" max=(crate::supervisor::MAX_INTERNAL_WORKERS) value=(active) required size="3";
                    }
                    button type="submit" { "Scale" }
                }
                (action(v, "/ui/workers/internal/drain", "Drain", "", Some("Let the internal workers finish their tasks and claim no more?")))
                (action(v, "/ui/workers/internal/stop", "Stop", "danger", Some("Stop the internal workers now? Their running tasks go back to the queue.")))
                (action(v, "/ui/workers/internal/start", "Start", "", None))
            }
        }
    } else {
        html! { p class="muted" { "Scaling, stopping and starting the internal workers needs an admin token." } }
    };
    let mut page = Page::new("Workers", "workers", live);
    page.head = head;
    page.events = Some("/api/v1/events".to_owned());
    page.every_ms = Some(3000);
    page
}

// ---------------------------------------------------------------------------------------------------------
// Batches

pub struct BatchesData {
    batches: Vec<api::Batch>,
    more: bool,
}

impl BatchesData {
    pub async fn load(state: &AppState, page: u64) -> StoreResult<Self> {
        let mut list =
            batches::list(&state.db, BATCHES_PER_PAGE + 1, page * BATCHES_PER_PAGE).await?;
        let more = list.len() as u64 > BATCHES_PER_PAGE;
        list.truncate(BATCHES_PER_PAGE as usize);
        let ids: Vec<Uuid> = list.iter().map(|b| b.id).collect();
        let mut progress = batches::progress(&state.db, &ids).await?;
        Ok(BatchesData {
            batches: list
                .into_iter()
                .map(|b| {
                    let p = progress.remove(&b.id).unwrap_or_default();
                    batches::to_api(b, p)
                })
                .collect(),
            more,
        })
    }
}

fn percent(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

fn progress_bar(b: &api::Batch) -> Markup {
    html! {
        progress max=(b.task_count.max(1)) value=(b.finished) aria-label="finished" { (percent(b.progress)) }
        " " (b.finished) " / " (b.task_count)
    }
}

pub fn batches(d: &BatchesData, page: u64) -> Page {
    let now = store::now();
    let live = html! {
        div class="scroll" {
            table class="batches" {
                thead { tr { th { "Batch" } th { "Created" } th { "Progress" } th { "Running" } th { "Failed" } th { "Success rate" } } }
                tbody {
                    @for b in &d.batches {
                        tr data-batch-id=(b.id) {
                            td { a href={ "/ui/batches/" (b.id) } { (b.name.clone().unwrap_or_else(|| short(&b.id))) } }
                            td { (ago(b.created_at, now)) @if let Some(by) = &b.created_by { " by " (by) } }
                            td class="nowrap" { (progress_bar(b)) }
                            td { (b.counts.running) }
                            td { (b.counts.failed + b.counts.timeout) }
                            td { @match b.success_rate { Some(r) => (percent(r)), None => "—" } }
                        }
                    }
                    @if d.batches.is_empty() {
                        (empty_row(6, html! { "No batches yet. Start a campaign with " code { "task-executor submit --matrix" } " or " code { "POST /api/v1/batches" } "." }))
                    }
                }
            }
        }
        nav class="pager" aria-label="Pages" {
            @if page > 0 { a href={ "/ui/batches?page=" (page - 1) } rel="prev" { "← Newer" } }
            span { "Page " (page + 1) }
            @if d.more { a href={ "/ui/batches?page=" (page + 1) } rel="next" { "Older →" } }
        }
    };
    let mut page = Page::new("Batches", "batches", live);
    page.events = Some("/api/v1/events".to_owned());
    page.throttle_ms = 2000;
    page
}

/// A leaderboard as a heat map: rows × columns, each cell coloured by its success rate (in tenths, through
/// classes: the Content-Security-Policy allows no inline style), its interval and runs on hover.
fn heat_map(m: &leaderboard::Matrix) -> Markup {
    let cells: BTreeMap<(&Option<String>, &Option<String>), &leaderboard::Cell> =
        m.cells.iter().map(|c| ((&c.row, &c.col), c)).collect();
    let name = |k: &Option<String>| k.clone().unwrap_or_else(|| "(none)".to_owned());
    html! {
        @if m.cells.iter().all(|c| c.runs == 0) {
            p class="empty" { "No finished runs yet." }
        } @else {
            div class="scroll" {
                table class="heat-map" {
                    thead { tr { th { (m.rows.as_str()) " ↓ / " (m.cols.as_str()) " →" } @for c in &m.col_keys { th scope="col" { (name(c)) } } } }
                    tbody {
                        @for r in &m.row_keys {
                            tr {
                                th scope="row" { (name(r)) }
                                @for c in &m.col_keys {
                                    @match cells.get(&(r, c)).filter(|x| x.runs > 0) {
                                        Some(x) => {
                                            @let rate = x.success_rate.unwrap_or(0.0);
                                            @let ci = x.ci95.map(|i| format!("[{:.2}, {:.2}]", i.low, i.high)).unwrap_or_default();
                                            td class={ "heat heat-" ((rate * 10.0).round() as u32) }
                                                title={ (percent(rate)) " of " (x.runs) ", 95 % interval " (ci)
                                                        @if x.infrastructure_failures > 0 { "; " (x.infrastructure_failures) " infrastructure failures left out" } } {
                                                (percent(rate)) small { " n=" (x.runs) }
                                            }
                                        }
                                        None => td class="heat" { "—" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p class="hint" { "Cancelled runs and infrastructure failures are left out; hover a cell for its 95 % Wilson interval." }
        }
    }
}

/// The leaderboard across every batch.
pub struct BoardData {
    board: leaderboard::Matrix,
}

impl BoardData {
    pub async fn load(state: &AppState, rows: Rows, cols: Cols) -> StoreResult<Self> {
        Ok(BoardData {
            board: leaderboard::matrix(&state.db, &ListFilter::default(), rows, cols, false)
                .await?,
        })
    }
}

pub fn board(d: &BoardData) -> Page {
    let (rows, cols) = (d.board.rows, d.board.cols);
    let live = html! {
        form method="get" class="filters" data-autosubmit {
            label { "Rows "
                select name="rows" { @for r in [Rows::Agent, Rows::Model] { option value=(r.as_str()) selected[r == rows] { (r.as_str()) } } }
            }
            label { "Columns "
                select name="cols" { @for c in [Cols::ProblemId, Cols::ProblemFamily, Cols::TaskType] { option value=(c.as_str()) selected[c == cols] { (c.as_str()) } } }
            }
            noscript { button type="submit" { "Show" } }
        }
        (heat_map(&d.board))
        p class="exports" { "Export: " a href={ "/api/v1/stats/matrix?format=csv&rows=" (rows.as_str()) "&cols=" (cols.as_str()) } id="board-csv" { "CSV" } }
    };
    // It reads every finished run: drawn when the page is loaded, not refreshed live.
    Page::new("Leaderboard", "leaderboard", live)
}

pub struct BatchData {
    batch: api::Batch,
    board: Option<leaderboard::Matrix>,
    per_problem: BTreeMap<String, ProblemFigures>,
    durations: Vec<f64>,
    rows: Vec<task::Model>,
}

/// Result rows the batch page lists (all of them: the export).
const BATCH_ROWS_SHOWN: u64 = 200;

impl BatchData {
    /// Grouped and narrow reads: the figures per problem and the durations in SQL, and only the rows shown,
    /// however large the batch.
    /// `with_board`: also the heat map, which reads every finished run of the batch (not at live refreshes).
    pub async fn load(state: &AppState, id: Uuid, with_board: bool) -> StoreResult<Self> {
        let db = &state.db;
        let b = batches::get(db, id).await?;
        let mut progress = batches::progress(db, &[id]).await?;
        let batch = batches::to_api(b, progress.remove(&id).unwrap_or_default());
        let filter = ListFilter {
            batch_id: Some(id),
            ..Default::default()
        };
        Ok(BatchData {
            board: match with_board {
                true => Some(
                    leaderboard::matrix(db, &filter, Rows::Agent, Cols::ProblemId, false).await?,
                ),
                false => None,
            },
            batch,
            per_problem: batches::per_problem(db, id).await?,
            durations: batches::durations(db, id).await?,
            rows: tasks::page_after(db, &filter, None, BATCH_ROWS_SHOWN).await?,
        })
    }
}

pub fn batch(d: &BatchData, v: &Viewer, notice: Option<&str>) -> Page {
    let b = &d.batch;
    let unfinished = b.finished < b.task_count;
    let durations = results::summarize(d.durations.clone());
    let live = html! {
        (notice_box(notice))
        div class="task-head" {
            span class="nowrap" { (progress_bar(b)) " finished" }
            @if unfinished && v.may(Role::Submit) {
                (action(v, &format!("/ui/batches/{}/cancel", b.id), "Cancel batch", "danger", Some("Cancel every unfinished task of this batch?")))
            }
        }
        dl class="facts" {
            dt { "Batch" } dd { code { (b.id) } }
            dt { "Created" } dd { (time(b.created_at)) @if let Some(by) = &b.created_by { " by " (by) } }
            dt { "By status" } dd {
                ul class="chips" {
                    @for (s, n) in [
                        (TaskStatus::Pending, b.counts.pending), (TaskStatus::Running, b.counts.running),
                        (TaskStatus::Completed, b.counts.completed), (TaskStatus::Failed, b.counts.failed),
                        (TaskStatus::Timeout, b.counts.timeout), (TaskStatus::Cancelled, b.counts.cancelled),
                    ] {
                        @if n > 0 { li { a href={ "/ui/tasks?batch_id=" (b.id) "&status=" (s) } { (status_badge(s)) " " (n) } } }
                    }
                }
            }
            dt { "Success rate" } dd { @match b.success_rate { Some(r) => { (percent(r)) " (" (b.succeeded) " of " (b.finished) " finished)" }, None => "— (none finished yet)" } }
            @if let Some(at) = b.started_at { dt { "Started" } dd { (time(at)) } }
            @if let Some(at) = b.finished_at { dt { "Finished" } dd { (time(at)) } }
            @if let (Some(m), Some(p90)) = (durations.median, durations.p90) {
                dt { "Duration" } dd { "median " (seconds(m)) ", p90 " (seconds(p90)) }
            }
        }
        div class="charts" {
            figure {
                figcaption { "Success rate per problem" }
                (charts::success_per_problem(&d.per_problem))
            }
            figure {
                figcaption { "Run durations" }
                (charts::histogram(&d.durations))
            }
        }
        section aria-labelledby="h-results" {
            h2 id="h-results" { "Results" }
            p class="exports" {
                "Export: "
                a href={ "/api/v1/batches/" (b.id) "/results?format=csv" } download={ "batch-" (short(&b.id)) ".csv" } id="export-csv" { "CSV" } " · "
                a href={ "/api/v1/batches/" (b.id) "/results?format=jsonl" } download={ "batch-" (short(&b.id)) ".jsonl" } { "JSONL" } " · "
                a href={ "/api/v1/batches/" (b.id) "/results?format=json" } { "JSON" } " · "
                a href={ "/ui/tasks?batch_id=" (b.id) } { "its tasks" }
            }
            div class="scroll" {
                table class="results" {
                    thead { tr { th { "Task" } th { "Problem" } th { "Agent" } th { "Status" } th { "Success" } th { "Duration" } th { "Steps" } } }
                    tbody {
                        @for t in &d.rows {
                            tr data-task-id=(t.id) {
                                td { a href={ "/ui/tasks/" (t.id) } { code { (short(&t.id)) } } }
                                td { (t.problem_id) }
                                td { (results::agent_of(t).unwrap_or_default()) }
                                td class="status-cell" { (status_badge(t.status)) }
                                td { @match results::success_of(t) { Some(true) => span class="ok" { "yes" }, Some(false) => span class="bad" { "no" }, None => "—" } }
                                td { @match results::duration_of(t).filter(|_| t.status.is_terminal()) { Some(s) => (seconds(s)), None => "—" } }
                                td { @match results::steps_of(t) { Some(s) => (s), None => "—" } }
                            }
                        }
                        @if d.rows.is_empty() { (empty_row(7, html! { "This batch has no tasks." })) }
                    }
                }
            }
            @if (b.task_count as usize) > d.rows.len() {
                p class="muted" { "The first " (d.rows.len()) " of " (b.task_count) " tasks; all of them in the export." }
            }
        }
    };
    let mut page = Page::new(
        format!("Batch {}", b.name.clone().unwrap_or_else(|| short(&b.id))),
        "batches",
        live,
    );
    page.events = Some(format!("/api/v1/events?batch_id={}", b.id));
    page.throttle_ms = 2000;
    if let Some(board) = &d.board {
        page.tail = html! {
            section aria-labelledby="h-board" {
                h2 id="h-board" { "Success rate by agent and problem" }
                (heat_map(board))
                @if unfinished { p class="muted" { "As the page was loaded: reload it for the runs finished since." } }
            }
        };
    }
    page
}
