//! The daemon around the shared worker: its registration (host facts in the metadata), the slots and their
//! clusters from the settings, and what it observes (its metrics, systemd readiness). The worker loop itself
//! is `task_executor_shared::worker`, the same as the API server's internal workers run.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use task_executor_shared::{
    InstanceId, ProblemGlob, WorkerId,
    api::{RegisterWorkerRequest, WorkerCapabilities},
    worker::{Observer, QueueError, Settings, Shutdown, Worker},
};

use crate::{client::Client, config::Config, metrics::DaemonMetrics, state::State};

/// The daemon's metrics and systemd readiness, fed by the worker.
struct Watch {
    metrics: Arc<DaemonMetrics>,
}

impl Observer for Watch {
    fn registered(&self) {
        // Under systemd (Type=notify): ready once registered. A no-op elsewhere.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
    fn run_started(&self) {
        self.metrics.running.add(1, &[]);
    }
    fn run_ended(&self, outcome: &'static str) {
        self.metrics.running.add(-1, &[]);
        self.metrics.run_ended(outcome);
    }
    fn retried(&self) {
        self.metrics.report_retries.add(1, &[]);
    }
    fn backlog(&self, delta: i64) {
        self.metrics.backlog.add(delta, &[]);
    }
    fn degraded(&self, reason: Option<&str>) {
        self.metrics
            .degraded
            .record(i64::from(reason.is_some()), &[]);
    }
}

fn registration(cfg: &Config, worker_id: WorkerId, instance_id: String) -> RegisterWorkerRequest {
    RegisterWorkerRequest {
        worker_id,
        backend_type: cfg.backend_type.clone().into(),
        capabilities: WorkerCapabilities {
            max_parallel_tasks: i32::from(cfg.max_parallel_tasks),
            supported_problems: cfg
                .supported_problems
                .iter()
                .filter_map(|p| ProblemGlob::parse(p.as_str()).ok())
                .collect(),
        },
        metadata: Some(json!({
            "hostname": nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()),
            "version": env!("CARGO_PKG_VERSION"),
            "runner": format!("{:?}", cfg.runner.runner).to_lowercase(),
            "clusters": cfg.clusters(),
            "pid": std::process::id(),
        })),
        instance_id: InstanceId::parse(instance_id).ok(),
    }
}

/// Runs the worker until shut down; returns when every slot has stopped and the server knows.
pub async fn run(
    cfg: Config,
    shutdown: Shutdown,
    metrics: Arc<DaemonMetrics>,
) -> anyhow::Result<()> {
    let id = cfg.worker_id();
    let worker_id = WorkerId::parse(id.clone())
        .map_err(|e| anyhow::anyhow!("invalid worker id `{id}`: {e}"))?;
    let client = Client::from_config(&cfg)?;
    match client.whoami().await {
        Ok(identity) => {
            let ok = client
                .judge_identity(identity)
                .map_err(anyhow::Error::msg)?;
            tracing::info!("check ok: {ok}");
        }
        Err(QueueError::Unavailable(e)) => {
            tracing::warn!(error = %e, "cannot check the token now: registration will retry")
        }
        Err(e) => anyhow::bail!("{e}"),
    }
    let state = State::open(&cfg.state_dir())?;
    let settings = Settings {
        registration: registration(&cfg, worker_id, state.instance_id.clone()),
        clusters: cfg.clusters(),
        runner: cfg.runner.clone(),
        heartbeat_interval: cfg.heartbeat_interval(),
        claim_wait: Duration::from_secs(cfg.claim_wait_seconds),
        spool: Some(state.spool.clone()),
    };
    let worker = Worker::new(client, settings, shutdown, Arc::new(Watch { metrics }));
    let r = worker
        .run()
        .await
        .map_err(|e| anyhow::anyhow!("cannot register with {}: {e}", cfg.server()));
    drop(state);
    r
}
