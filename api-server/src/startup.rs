//! Building and running the server: [`Application::build`] connects to the database, applies migrations and
//! binds the listener (port 0 in tests); [`Application::run_until_stopped`] serves until told to stop.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use tokio_util::sync::CancellationToken;

use crate::{
    auth,
    config::Config,
    dispatch::Dispatcher,
    metrics::Metrics,
    ratelimit::RateLimiter,
    reaper, routes,
    state::AppState,
    store::{self, queue::LeasePolicy, workers},
    supervisor::{Supervisor, WorkerEnv},
};

pub struct Application {
    acceptor: TcpAcceptor,
    addr: std::net::SocketAddr,
    port: u16,
    state: AppState,
}

/// How long in-flight requests get to finish after the stop signal.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection on which nothing moved for this long, with no request being answered, is closed: slow or stuck
/// clients cannot hold connections (see `serve`).
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(75);

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = store::connect_with(
            &config.database_url,
            config.database_max_connections,
            config.sqlite_synchronous == crate::config::SqliteSync::Full,
        )
        .await?;
        let auth = Arc::new(auth::Registry::new(
            config.insecure_no_auth,
            config.tokens_file.clone(),
        ));
        auth.refresh(&db).await?;
        let bind_addr = listen_address(&config, auth.enabled()).await?;
        let acceptor = TcpListener::bind(bind_addr.clone())
            .into_acceptor()
            .await
            .with_context(|| format!("cannot listen on {bind_addr}"))?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .context("the listener has no TCP address")?;
        let port = addr.port();
        let metrics = Arc::new(Metrics::new());
        let lease = LeasePolicy {
            heartbeat_timeout: config.heartbeat_timeout(),
            claim_grace: chrono::Duration::seconds(config.claim_grace_seconds as i64),
            max_attempts: config.task_max_attempts,
            max_uncounted_requeues: config.max_uncounted_requeues,
            max_log_entries: config.max_log_entries_per_task,
        };
        let dispatcher = Dispatcher::new(
            db.clone(),
            lease,
            metrics.clone(),
            config.max_waiting_claims as usize,
        )
        .poll_every(Duration::from_millis(config.claim_poll_interval_ms));
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "host".to_owned());
        let instance_id = format!("api-server@{host}:{port}");
        if config.auto_start_workers && config.num_internal_workers > 0 {
            let ids: Vec<String> = (1..=config.num_internal_workers)
                .map(|i| Supervisor::worker_id(&config.internal_worker_prefix, i))
                .collect();
            if let Some((id, holder)) =
                workers::held_by_another(&db, &ids, &instance_id, lease.heartbeat_timeout).await?
            {
                anyhow::bail!(
                    "internal worker id {id} is in use by another live process ({holder}), probably another \
                     API server on this database: give this one internal worker ids of its own with \
                     INTERNAL_WORKER_PREFIX (or --internal-worker-prefix)"
                );
            }
        }
        let supervisor = Arc::new(Supervisor::new(
            WorkerEnv {
                dispatcher: dispatcher.clone(),
                runner: config.runner.clone(),
                prefix: config.internal_worker_prefix.clone(),
                clusters: config.internal_kind_clusters.clone(),
                heartbeat_interval: reaper::interval(lease.heartbeat_timeout),
                instance_id,
            },
            config.num_internal_workers as usize,
        ));
        // Cancelled when the server stops, which ends every live stream (they would hold the shutdown).
        let streams_stop = CancellationToken::new();
        let tail = crate::events::Tail::new(db.clone(), streams_stop).await?;
        let state = AppState {
            tail,
            db,
            dispatcher,
            supervisor,
            metrics,
            limiter: RateLimiter::new(config.rate_limit_per_second, config.rate_limit_burst),
            auth,
            admission: config.admission(),
            config: Arc::new(config),
            counts: Arc::default(),
        };
        Ok(Application {
            acceptor,
            addr,
            port,
            state,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The port actually bound (useful when the configuration asked for port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the handlers share: the database, the dispatcher (what internal workers call), the caps.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let app = routes::app(&self.state);
        tracing::info!(port = self.port, database = %store::redact(&self.state.config.database_url), "listening");
        let reaper = tokio::spawn(reaper::run(
            self.state.dispatcher.clone(),
            self.state.config.retention(),
            stop.clone(),
        ));
        if store::is_postgres(&self.state.db) {
            tokio::spawn(crate::dispatch::listen(
                self.state.config.database_url.clone(),
                self.state.dispatcher.clone(),
                stop.clone(),
            ));
            tokio::spawn(crate::dispatch::announce(
                self.state.dispatcher.clone(),
                stop.clone(),
            ));
        }
        tokio::spawn(
            self.state
                .auth
                .clone()
                .run(self.state.db.clone(), stop.clone()),
        );
        if let Some(limiter) = &self.state.limiter {
            tokio::spawn(limiter.clone().run(stop.clone()));
        }
        tokio::spawn(self.state.tail.clone().run());
        if self.state.config.auto_start_workers && self.state.config.num_internal_workers > 0 {
            if let Err(e) = self.state.config.runner.check() {
                tracing::warn!(error = %e, "the runner is not usable: internal workers will show degraded and claim nothing until it is");
            }
            let _ = self.state.supervisor.start().await;
        }
        let stop_signal = stop.clone();
        let supervisor = self.state.supervisor.clone();
        let streams = self.state.tail.stop.clone();
        // Under systemd (Type=notify): ready once listening with migrations applied. A no-op elsewhere.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        crate::serve::serve(
            crate::serve::NoDelay(self.acceptor),
            app,
            IDLE_CONNECTION_TIMEOUT,
            async move {
                shutdown.await;
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                // Like POST /workers/internal/stop: running tasks go back to the queue, none is left
                // `running` behind this process.
                supervisor.stop(false).await;
                streams.cancel();
                stop_signal.cancel();
            },
            GRACEFUL_TIMEOUT,
        )
        .await;
        stop.cancel();
        let _ = reaper.await;
        self.state.db.clone().close().await.ok();
        Ok(())
    }
}

/// Where to listen: `BIND_ADDR`, or by default every interface when tokens exist and loopback when none
/// does. Without tokens (and without `--insecure-no-auth`) an address that is not loopback is refused: the
/// server would let anyone who reaches it run anything on the workers.
async fn listen_address(config: &Config, auth_on: bool) -> anyhow::Result<String> {
    let addr = config.bind_addr.clone().unwrap_or_else(|| {
        if auth_on {
            "0.0.0.0:8000"
        } else {
            "127.0.0.1:8000"
        }
        .to_owned()
    });
    if auth_on {
        return Ok(addr);
    }
    if config.insecure_no_auth {
        tracing::warn!(address = %addr, "authentication is OFF (--insecure-no-auth): anyone who can reach this address may create tasks, act as a worker and stop the workers");
        return Ok(addr);
    }
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr.as_str())
        .await
        .with_context(|| format!("cannot resolve the listen address {addr}"))?
        .collect();
    if resolved.is_empty() || resolved.iter().any(|a| !a.ip().is_loopback()) {
        anyhow::bail!(
            "refusing to listen on {addr} without authentication: no API token exists, so anyone reaching \
             that address could run anything on the workers. Create one (`api-server token create --name admin \
             --role admin`, or a TOKENS_FILE), listen on loopback (BIND_ADDR=127.0.0.1:8000), or pass \
             --insecure-no-auth if everyone on that network may do everything"
        );
    }
    tracing::info!(address = %addr, "authentication is off: no API token exists, so this server listens on loopback only and asks for none (create one with `api-server token create`; it turns authentication on within 2 s)");
    Ok(addr)
}
