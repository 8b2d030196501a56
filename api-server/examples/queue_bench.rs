//! Queue benchmark: the real server in-process on 127.0.0.1, driven over HTTP by concurrent workers that
//! claim and complete tasks as fast as they can. Prints throughput and latency percentiles.
//!
//! ```text
//! cargo run --release -p api-server --example queue_bench                          # SQLite (temp file)
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench cargo run --release -p api-server --example queue_bench
//! BENCH_TASKS=5000 BENCH_WORKERS=32 …
//! ```

use std::time::{Duration, Instant};

use api_server::{Application, Config};
use serde_json::{Value, json};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(name: &str, mut lat: Vec<Duration>, wall: Duration) {
    lat.sort();
    println!(
        "{name:<10} {:>6} requests  {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tasks = env_or("BENCH_TASKS", 2000);
    let workers = env_or("BENCH_WORKERS", 16);
    let dir = tempfile::tempdir()?;
    let url = std::env::var("BENCH_DATABASE_URL").unwrap_or_else(|_| {
        format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        )
    });
    let mut config = Config::for_database(&url);
    config.bind_addr = Some("127.0.0.1:0".to_owned());
    config.auto_start_workers = false;
    // The clients all come from one address: the queue is measured, not the per-client rate limit.
    config.rate_limit_per_second = 0;
    config.max_pending_tasks = 0;
    let app = Application::build(config).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()?;
    println!(
        "backend {}  tasks {tasks}  workers {workers}",
        if url.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        }
    );

    // Creation, from `workers` concurrent clients.
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..workers {
        let (client, base) = (client.clone(), base.clone());
        let n = tasks / workers + usize::from(w < tasks % workers);
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let t = Instant::now();
                let r = client
                    .post(format!("{base}/api/v1/tasks"))
                    .json(&json!({"problem_id": format!("bench-{w}-{i}"), "parameters": {"agent_config": {"model": "m"}}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await?);
    }
    report("create", lat, start.elapsed());

    for w in 0..workers {
        let r = client
            .post(format!("{base}/api/v1/workers/register"))
            .json(&json!({"worker_id": format!("bench-{w}"), "backend_type": "kind"}))
            .send()
            .await?;
        assert!(r.status().is_success());
    }

    // Claim and complete until the queue is empty.
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..workers {
        let (client, base) = (client.clone(), base.clone());
        handles.push(tokio::spawn(async move {
            let (mut claims, mut completes) = (Vec::new(), Vec::new());
            loop {
                let t = Instant::now();
                let r = client
                    .post(format!("{base}/api/v1/workers/bench-{w}/claim"))
                    .send()
                    .await
                    .unwrap();
                claims.push(t.elapsed());
                if r.status() == 204 {
                    return (claims, completes);
                }
                let task: Value = r.json().await.unwrap();
                let id = task["id"].as_str().unwrap().to_owned();
                let t = Instant::now();
                let c = client
                    .post(format!(
                        "{base}/api/v1/workers/bench-{w}/tasks/{id}/complete"
                    ))
                    .json(&json!({"attempt": task["attempt"], "lease_id": task["lease_id"], "result": {"success": true}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(c.status(), 200);
                completes.push(t.elapsed());
            }
        }));
    }
    let (mut claims, mut completes) = (Vec::new(), Vec::new());
    for h in handles {
        let (c, d) = h.await?;
        claims.extend(c);
        completes.extend(d);
    }
    let wall = start.elapsed();
    let done = completes.len();
    report("claim", claims, wall);
    report("complete", completes, wall);
    println!(
        "claim+complete: {done} tasks in {:.2} s = {:.0} tasks/s; peak RSS {:.0} MiB",
        wall.as_secs_f64(),
        done as f64 / wall.as_secs_f64(),
        peak_rss_mib()
    );
    assert_eq!(done, tasks, "every task completed once");
    Ok(())
}
