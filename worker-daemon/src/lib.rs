//! The worker daemon of the AIOpsLab task executor: runs on each host with kind clusters, registers with the
//! API server, heartbeats, claims tasks over HTTP and runs them with the shared execution engine.

pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod state;

use std::time::Duration;

use config::{Command, Config};
use task_executor_shared::worker::Shutdown;

/// `worker-daemon check`: prints what is fine, or fails with what is not.
pub async fn check(cfg: &Config) -> anyhow::Result<()> {
    let client = client::Client::from_config(cfg)?;
    for line in check::local(cfg).map_err(anyhow::Error::msg)? {
        println!("ok: {line}");
    }
    println!(
        "ok: {}",
        check::server(cfg, &client)
            .await
            .map_err(anyhow::Error::msg)?
    );
    println!(
        "ok: {}",
        client.check_token().await.map_err(anyhow::Error::msg)?
    );
    Ok(())
}

/// Runs the daemon until SIGTERM/SIGINT (then drains; a second signal stops runs at once).
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if matches!(cfg.command, Some(Command::Check)) {
        return check(&cfg).await;
    }
    for line in check::local(&cfg).map_err(anyhow::Error::msg)? {
        tracing::info!("check ok: {line}");
    }
    let shutdown = Shutdown::default();
    let grace = Duration::from_secs(cfg.shutdown_grace_seconds);
    let metrics = std::sync::Arc::new(metrics::DaemonMetrics::new());
    let metrics_stop = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = cfg.metrics_addr.clone() {
        let (m, stop) = (metrics.clone(), metrics_stop.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m, stop).await {
                tracing::error!(error = %e, "the metrics endpoint failed");
            }
        });
    }
    let signals = tokio::spawn(handle_signals(shutdown.clone(), grace));
    let r = daemon::run(cfg, shutdown, metrics).await;
    signals.abort();
    metrics_stop.cancel();
    r
}

async fn handle_signals(shutdown: Shutdown, grace: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "stopping: no new claims; running tasks get the grace period"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    shutdown.draining.cancel();
    tokio::select! {
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over: stopping running tasks"),
        _ = term.recv() => tracing::warn!("second signal: stopping running tasks now"),
        _ = int.recv() => tracing::warn!("second signal: stopping running tasks now"),
    }
    shutdown.forced.cancel();
}
