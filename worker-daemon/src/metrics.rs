//! The daemon's own metrics, served on `METRICS_ADDR` when set: runs by outcome, report retries, the backlog
//! of reports not yet delivered, and running tasks.

use std::sync::Arc;

use opentelemetry::{
    KeyValue,
    metrics::{Counter, UpDownCounter},
};
use poem::{EndpointExt, Route, Server, get, handler, listener::TcpListener, web::Data};
use task_executor_shared::metrics::Prom;
use tokio_util::sync::CancellationToken;

pub struct DaemonMetrics {
    prom: Prom,
    runs: Counter<u64>,
    pub report_retries: Counter<u64>,
    pub backlog: UpDownCounter<i64>,
    pub running: UpDownCounter<i64>,
    /// 1 while a slot's runner cannot run problems (the worker is `degraded`), else 0.
    pub degraded: opentelemetry::metrics::Gauge<i64>,
}

impl DaemonMetrics {
    pub fn new() -> Self {
        let prom = Prom::new();
        let m = prom.meter("worker-daemon");
        DaemonMetrics {
            runs: m
                .u64_counter("worker_daemon_task_runs")
                .with_description(
                    "Task runs, by outcome (completed, failed, timeout, cancelled, released, unusable).",
                )
                .build(),
            report_retries: m
                .u64_counter("worker_daemon_report_retries")
                .with_description("Requests to the API server retried after a failure.")
                .build(),
            backlog: m
                .i64_up_down_counter("worker_daemon_report_backlog")
                .with_description(
                    "Reports (log batches, outcomes) not yet delivered to the API server.",
                )
                .build(),
            running: m
                .i64_up_down_counter("worker_daemon_running_tasks")
                .with_description("Tasks running now.")
                .build(),
            degraded: m
                .i64_gauge("worker_daemon_degraded")
                .with_description(
                    "1 while a slot's runner cannot run problems (it claims nothing), else 0.",
                )
                .build(),
            prom,
        }
    }

    pub fn run_ended(&self, outcome: &'static str) {
        self.runs.add(1, &[KeyValue::new("outcome", outcome)]);
    }

    pub fn render(&self) -> String {
        self.prom.render()
    }
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[handler]
fn metrics(m: Data<&Arc<DaemonMetrics>>) -> String {
    m.render()
}

/// Serves `GET /metrics` on `addr` until `stop`.
pub async fn serve(
    addr: String,
    m: Arc<DaemonMetrics>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let app = Route::new().at("/metrics", get(metrics)).data(m);
    tracing::info!(addr = %addr, "serving metrics");
    Server::new(TcpListener::bind(addr))
        .run_with_graceful_shutdown(app, async move { stop.cancelled().await }, None)
        .await?;
    Ok(())
}
