//! `worker-daemon check`, also run at start: the configuration and what the daemon depends on.

use crate::{client::Client, config::Config};
use task_executor_shared::{WorkerId, runner::RunnerKind, validate};

/// Checks that need no server: ids, patterns, the runner and, for `aiopslab`, the kind clusters.
pub fn local(cfg: &Config) -> Result<Vec<String>, String> {
    let mut ok = Vec::new();
    let id = cfg.worker_id();
    WorkerId::parse(id.clone()).map_err(|e| format!("worker id `{id}`: {e}"))?;
    ok.push(format!("worker id {id}"));
    for p in &cfg.supported_problems {
        validate::problem_glob(p)?;
    }
    cfg.runner.check()?;
    ok.push(format!("runner {:?} is usable", cfg.runner.runner).to_lowercase());
    if cfg.runner.runner == RunnerKind::Aiopslab {
        let clusters = cfg.clusters();
        if cfg.max_parallel_tasks > 1 && cfg.kind_clusters.len() < cfg.max_parallel_tasks as usize {
            return Err(format!(
                "MAX_PARALLEL_TASKS is {} but KIND_CLUSTERS names {}: each parallel run needs its own kind cluster",
                cfg.max_parallel_tasks,
                cfg.kind_clusters.len()
            ));
        }
        let out = std::process::Command::new("kind")
            .args(["get", "clusters"])
            .output()
            .map_err(|e| {
                format!(
                    "`kind get clusters` could not run ({e}): install kind, or use another runner"
                )
            })?;
        if !out.status.success() {
            return Err(format!(
                "`kind get clusters` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let existing: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .collect();
        let missing: Vec<&String> = clusters.iter().filter(|c| !existing.contains(c)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "kind clusters missing: {} (create them with `kind create cluster --name NAME`)",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        ok.push(format!("kind clusters present: {}", clusters.join(", ")));
    }
    Ok(ok)
}

/// The API server answers.
pub async fn server(cfg: &Config, client: &Client) -> Result<String, String> {
    match client.ping().await {
        Ok(status) => Ok(format!("API server at {} answers ({status})", cfg.server())),
        Err(e) => Err(format!(
            "API server at {} does not answer: {e}",
            cfg.server()
        )),
    }
}
