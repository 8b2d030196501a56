//! The server's metrics (`GET /metrics`). Counters and histograms are recorded where things happen; queue
//! depth, the oldest pending task, workers by status and the pool are read at scrape time. HTTP metrics
//! are labelled by route template, never by raw path, so task ids never become series.

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Histogram},
};
use sea_orm::{DatabaseBackend, DatabaseConnection};
use task_executor_shared::{
    TaskStatus, WorkerStatus,
    metrics::{HTTP_SECONDS, Prom, TASK_SECONDS},
};

use crate::store::{self, entity::task, stats, workers};

/// Seconds from `a` to `b`, never negative.
fn seconds_between(a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>) -> f64 {
    f64::max((b - a).num_milliseconds() as f64 / 1000.0, 0.0)
}

pub struct Metrics {
    prom: Prom,
    tasks_created: Counter<u64>,
    tasks_claimed: Counter<u64>,
    tasks_finished: Counter<u64>,
    tasks_requeued: Counter<u64>,
    claim_wait: Histogram<f64>,
    run_duration: Histogram<f64>,
    http_requests: Counter<u64>,
    http_duration: Histogram<f64>,
    queue_tasks: Gauge<i64>,
    oldest_pending: Gauge<f64>,
    workers: Gauge<i64>,
    db_pool: Gauge<i64>,
}

impl Metrics {
    pub fn new() -> Self {
        let prom = Prom::new();
        let m = prom.meter("api-server");
        Metrics {
            tasks_created: m
                .u64_counter("task_executor_tasks_created")
                .with_description("Tasks created.")
                .build(),
            tasks_claimed: m
                .u64_counter("task_executor_tasks_claimed")
                .with_description("Task runs claimed by workers (each attempt counts).")
                .build(),
            tasks_finished: m
                .u64_counter("task_executor_tasks_finished")
                .with_description("Tasks that reached a final status, by status.")
                .build(),
            tasks_requeued: m
                .u64_counter("task_executor_tasks_requeued")
                .with_description("Runs put back in the queue, by reason.")
                .build(),
            claim_wait: m
                .f64_histogram("task_executor_claim_wait")
                .with_unit("s")
                .with_description("Time from a task's creation to its claim.")
                .with_boundaries(TASK_SECONDS.to_vec())
                .build(),
            run_duration: m
                .f64_histogram("task_executor_task_run_duration")
                .with_unit("s")
                .with_description("Time from claim to final status of a run, by status.")
                .with_boundaries(TASK_SECONDS.to_vec())
                .build(),
            http_requests: m
                .u64_counter("task_executor_http_requests")
                .with_description("HTTP requests, by route template, method and status.")
                .build(),
            http_duration: m
                .f64_histogram("task_executor_http_request_duration")
                .with_unit("s")
                .with_description("HTTP request latency, by route template and method.")
                .with_boundaries(HTTP_SECONDS.to_vec())
                .build(),
            queue_tasks: m
                .i64_gauge("task_executor_queue_tasks")
                .with_description("Tasks waiting or running, by status (read at scrape time).")
                .build(),
            oldest_pending: m
                .f64_gauge("task_executor_queue_oldest_pending_age")
                .with_unit("s")
                .with_description(
                    "Age of the oldest pending task; 0 when none (read at scrape time).",
                )
                .build(),
            workers: m
                .i64_gauge("task_executor_workers")
                .with_description("Registered workers, by status (read at scrape time).")
                .build(),
            db_pool: m
                .i64_gauge("task_executor_db_pool_connections")
                .with_description("Database pool connections, by state (idle, in_use).")
                .build(),
            prom,
        }
    }

    pub fn task_created(&self) {
        self.tasks_created.add(1, &[]);
    }

    pub fn task_claimed(&self, t: &task::Model) {
        self.tasks_claimed.add(1, &[]);
        if let Some(started) = t.started_at {
            let wait = seconds_between(t.created_at, started);
            self.claim_wait.record(wait, &[]);
        }
    }

    /// A task reached a final status (from any path: report, reaper, cancel).
    pub fn task_finished(&self, t: &task::Model) {
        let status = KeyValue::new("status", t.status.as_str());
        self.tasks_finished.add(1, std::slice::from_ref(&status));
        if let (Some(s), Some(c)) = (t.started_at, t.completed_at) {
            let secs = seconds_between(s, c);
            self.run_duration.record(secs, &[status]);
        }
    }

    /// Runs put back in the queue; `reason` is one of a few fixed words.
    pub fn tasks_requeued(&self, n: usize, reason: &'static str) {
        if n > 0 {
            self.tasks_requeued
                .add(n as u64, &[KeyValue::new("reason", reason)]);
        }
    }

    /// Tasks released from a lost or restarted worker: requeued, or failed when out of attempts.
    pub fn released(&self, tasks: &[task::Model], reason: &'static str) {
        for t in tasks {
            if t.status == TaskStatus::Pending {
                self.tasks_requeued(1, reason);
            } else {
                self.task_finished(t);
            }
        }
    }

    pub fn http_request(&self, route: String, method: String, status: u16, seconds: f64) {
        let route = KeyValue::new("route", route);
        let method = KeyValue::new("method", method);
        self.http_duration
            .record(seconds, &[route.clone(), method.clone()]);
        self.http_requests.add(
            1,
            &[route, method, KeyValue::new("status", i64::from(status))],
        );
    }

    /// Reads the figures that live in the database, then renders everything.
    pub async fn render(
        &self,
        db: &DatabaseConnection,
        heartbeat_timeout: chrono::Duration,
    ) -> String {
        if let Err(e) = self.read_database(db, heartbeat_timeout).await {
            tracing::warn!(error = %e, "metrics: reading the database failed");
        }
        match db.get_database_backend() {
            DatabaseBackend::Postgres => {
                let pool = db.get_postgres_connection_pool();
                self.pool(pool.size(), pool.num_idle());
            }
            _ => {
                let pool = db.get_sqlite_connection_pool();
                self.pool(pool.size(), pool.num_idle());
            }
        }
        self.prom.render()
    }

    fn pool(&self, size: u32, idle: usize) {
        let idle = idle as i64;
        self.db_pool.record(idle, &[KeyValue::new("state", "idle")]);
        self.db_pool
            .record(i64::from(size) - idle, &[KeyValue::new("state", "in_use")]);
    }

    async fn read_database(
        &self,
        db: &DatabaseConnection,
        heartbeat_timeout: chrono::Duration,
    ) -> store::StoreResult<()> {
        // Only the live part of the queue is counted (finished tasks are counted by tasks_finished_total).
        let live = stats::live_queue(db).await?;
        for (status, n) in [
            (TaskStatus::Pending, live.pending),
            (TaskStatus::Running, live.running),
        ] {
            self.queue_tasks
                .record(n as i64, &[KeyValue::new("status", status.as_str())]);
        }
        let age = live
            .oldest_pending
            .map(|t| seconds_between(t, store::now()))
            .unwrap_or(0.0);
        self.oldest_pending.record(age, &[]);
        let listed = workers::list_with_status(db, heartbeat_timeout).await?;
        for s in WorkerStatus::all() {
            let n = listed.iter().filter(|(_, status, _)| *status == s).count() as i64;
            self.workers
                .record(n, &[KeyValue::new("status", s.as_str())]);
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
