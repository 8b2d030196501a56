//! Building and running the server: [`Application::build`] connects to the database, applies migrations and
//! binds the listener (port 0 in tests); [`Application::run_until_stopped`] serves until told to stop.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use poem::{
    EndpointExt, Route, Server,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
};
use poem_openapi::OpenApiService;
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    error,
    metrics::Metrics,
    routes::{
        health::HealthApi, internal::InternalWorkersApi, tasks::TasksApi, workers::WorkersApi,
    },
    store::{self, queue::LeasePolicy},
    supervisor::{Supervisor, WorkerEnv},
};

/// What every handler and background loop shares.
#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub config: Arc<Config>,
    /// Woken when a task becomes claimable in this process (created or released), so that waiting claims
    /// look at once.
    pub queue_changed: Arc<Notify>,
    pub lease: LeasePolicy,
    pub supervisor: Arc<Supervisor>,
    pub metrics: Arc<Metrics>,
}

pub struct Application {
    acceptor: TcpAcceptor,
    port: u16,
    state: AppState,
}

/// How long in-flight requests get to finish after the stop signal.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);

type Apis = (HealthApi, TasksApi, InternalWorkersApi, WorkersApi);

pub fn api_service(state: &AppState) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            HealthApi { state: state.clone() },
            TasksApi { state: state.clone() },
            InternalWorkersApi { state: state.clone() },
            WorkersApi { state: state.clone() },
        ),
        "AIOpsLab Task Executor",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Queues AIOpsLab problem runs in a database and hands them to workers that execute them and report \
         logs and results. Every error is `{detail, type, request_id}`.",
    )
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = store::connect(&config.database_url, config.database_max_connections).await?;
        let acceptor = TcpListener::bind(config.bind_addr.clone())
            .into_acceptor()
            .await
            .with_context(|| format!("cannot listen on {}", config.bind_addr))?;
        let port = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().map(|s| s.port()))
            .context("the listener has no TCP address")?;
        let queue_changed = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new());
        let lease = LeasePolicy {
            heartbeat_timeout: config.heartbeat_timeout(),
            claim_grace: chrono::Duration::seconds(config.claim_grace_seconds as i64),
            max_attempts: config.task_max_attempts,
        };
        let supervisor = Arc::new(Supervisor::new(
            WorkerEnv {
                db: db.clone(),
                lease,
                queue_changed: queue_changed.clone(),
                runner: config.runner.clone(),
                prefix: config.internal_worker_prefix.clone(),
                clusters: config.internal_kind_clusters.clone(),
                heartbeat_interval: reaper_interval(lease.heartbeat_timeout),
                metrics: metrics.clone(),
            },
            config.num_internal_workers as usize,
        ));
        let state = AppState {
            db,
            queue_changed,
            lease,
            supervisor,
            metrics,
            config: Arc::new(config),
        };
        Ok(Application {
            acceptor,
            port,
            state,
        })
    }

    /// The port actually bound (useful when the configuration asked for port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let api = api_service(&self.state);
        let ui = api.swagger_ui();
        let spec = api.spec_endpoint();
        let metrics = self.state.metrics.clone();
        let app = Route::new()
            .nest("/docs", ui)
            .at("/openapi.json", spec)
            .nest("/", api)
            .around(move |ep, req| error::edge(ep, req, metrics.clone()));
        tracing::info!(port = self.port, database = %store::redact(&self.state.config.database_url), "listening");
        let reaper = tokio::spawn(reaper_loop(self.state.clone(), stop.clone()));
        if self.state.config.auto_start_workers && self.state.config.num_internal_workers > 0 {
            if let Err(e) = self.state.config.runner.check() {
                tracing::warn!(error = %e, "the runner is not usable: internal workers will fail their tasks");
            }
            let _ = self.state.supervisor.start();
        }
        let stop_signal = stop.clone();
        let supervisor = self.state.supervisor.clone();
        // Under systemd (Type=notify): ready once listening with migrations applied. A no-op elsewhere.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let result = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                app,
                async move {
                    shutdown.await;
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                    // Like POST /workers/internal/stop: running tasks go back to the queue, none is left
                    // `running` behind this process.
                    supervisor.stop(false).await;
                    stop_signal.cancel();
                },
                Some(GRACEFUL_TIMEOUT),
            )
            .await;
        stop.cancel();
        let _ = reaper.await;
        self.state.db.clone().close().await.ok();
        result.context("server failed")
    }
}

/// How often the reaper runs: a third of the heartbeat timeout, at most every 10 s, at least every 100 ms.
pub fn reaper_interval(heartbeat_timeout: chrono::Duration) -> Duration {
    let third = heartbeat_timeout
        .to_std()
        .unwrap_or(Duration::from_secs(60))
        / 3;
    third.clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// Recovers from lost workers and overdue tasks until stopped. Safe in every replica: each change it makes
/// is conditional on the run it saw.
async fn reaper_loop(state: AppState, stop: CancellationToken) {
    let started = tokio::time::Instant::now();
    let grace = state.lease.heartbeat_timeout.to_std().unwrap_or_default();
    let mut tick = tokio::time::interval(reaper_interval(state.lease.heartbeat_timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store::queue::reap(&state.db, &state.lease, started.elapsed() >= grace).await {
            Ok(r) => {
                state.metrics.released(&r.released, "lease_expired");
                for t in &r.timed_out {
                    state.metrics.task_finished(t);
                }
                if !r.released.is_empty() {
                    state.queue_changed.notify_waiters();
                }
            }
            Err(e) => tracing::error!(error = %e, "reaper pass failed"),
        }
    }
}
