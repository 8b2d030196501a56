//! The API server of the AIOpsLab task executor: HTTP API, task queue on PostgreSQL or SQLite, the server
//! side of the worker protocol, and the supervisor of internal workers. `main.rs` only parses the
//! configuration and calls [`run`]. The README's "Code map" says what each module is for.

pub mod auth;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod heartbeats;
pub mod idempotency;
pub mod leaderboard;
pub mod metrics;
pub mod middleware;
pub mod ratelimit;
pub mod reaper;
pub mod results;
pub mod routes;
pub mod serve;
pub mod service;
pub mod startup;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod tokens_cli;
pub mod ui;

pub use config::Config;
pub use startup::Application;

/// Runs the server until SIGTERM or SIGINT (or the subcommand asked for).
pub async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(config::Command::Token(command)) = &config.command {
        return tokens_cli::run(&config, command).await;
    }
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown_signal()).await
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
