//! Queue benchmark. First the baseline, on the fresh database: the life of a task as three bare SQL
//! statements (insert; claim, `FOR UPDATE SKIP LOCKED` on PostgreSQL; complete) from as many clients as
//! workers, each holding a connection of its own on PostgreSQL as pgbench's do (on SQLite they pass the one
//! connection on, as the service's scripts do). Then the real server in-process on 127.0.0.1, driven over HTTP
//! by concurrent workers that create, claim and complete tasks as fast as they can (the ratio to the baseline
//! is printed), once as two phases (all created, then all claimed and completed) and once in the baseline's own
//! shape (each worker creates, claims and completes in turn), and once more in that shape without HTTP (each
//! worker calls what the handlers call, as the internal workers do), with the CPU time per task of PostgreSQL's
//! processes (when they run on this machine) and of this process after each; then heartbeat as fast as they
//! can; a request that does no database work, as the floor; then how long a task takes to reach a claim already
//! waiting for it, on one replica and (PostgreSQL) from one replica to another, alone and with a claim for other
//! problems waiting on the first. Prints throughput and latency percentiles.
//!
//! ```text
//! cargo run --release -p api-server --example queue_bench                          # SQLite (temp file)
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench cargo run --release -p api-server --example queue_bench
//! BENCH_TASKS=5000 BENCH_WORKERS=32 BENCH_SECONDS=5 …
//! BENCH_SEED_FINISHED=1000000 BENCH_SEED_LOGS=5 …    # first fill the database with old finished tasks and logs
//! BENCH_POOL=20 …                                     # the server's PostgreSQL pool (default: the server's default)
//! BENCH_BACKLOG_BATCHES=0 …                           # memory check: backlog in batches of 1,000 (default 100)
//! BENCH_SQL='ALTER TABLE …; …' …                      # what-ifs on the migrated schema, before anything runs
//! ```
//!
//! `BENCH_SERVER_BIN=target/release/api-server` adds the memory check: that binary as a process of its own,
//! with a backlog of 100,000 pending tasks and 1,000 claims long-polling for others, and its resident memory.
//!
//! On PostgreSQL each of the service's phases starts after a `VACUUM` of the queue's tables (see [`start_phase`]).
//!
//! It also times `/health` and `/metrics`, which read the whole queue's figures: with a seeded database, that
//! and the latencies against an empty one's are the flat-cost check.

use std::time::{Duration, Instant};

use api_server::{
    Application, Config,
    state::AppState,
    store::{
        self,
        queue::{Outcome, RunRef},
    },
};
use sea_orm::{
    ConnectionTrait, DatabaseBackend,
    sqlx::{self, Postgres, pool::PoolConnection},
};
use sea_query_sqlx::SqlxValues;
use serde_json::{Value, json};
use task_executor_shared::{api::CreateTaskRequest, params};
use tokio_util::sync::CancellationToken;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The part `i` of `parts` takes of `total`: as even as can be, the first ones taking one more.
fn share(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

/// Runs `phase(w, n)` for each of `parts` workers at once, worker `w` with its share `n` of `total`, and
/// gathers what each returns.
async fn each_worker<T, F, Fut>(parts: usize, total: usize, phase: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..parts)
        .map(|w| tokio::spawn(phase(w, share(total, parts, w))))
        .collect();
    let mut out = Vec::with_capacity(parts);
    for h in handles {
        out.push(h.await?);
    }
    Ok(out)
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
    status_mib("self", "VmHWM:")
}

/// CPU time used so far, in seconds: by PostgreSQL's processes when it runs on this machine (its postmaster
/// and every process it started, those that ended included), and by this process.
#[derive(Clone, Copy)]
struct CpuUse {
    postgres: Option<f64>,
    this: f64,
}

/// Reads [`CpuUse`]: what the two cores went to, per task, in each phase.
struct CpuClock {
    /// PostgreSQL's postmaster, found as the parent of one of its backends (none: SQLite, or a server elsewhere).
    postmaster: Option<String>,
    /// SQLite runs inside this process: its work is this process's.
    sqlite: bool,
}

impl CpuClock {
    async fn new(url: &str) -> CpuClock {
        let mut postmaster = None;
        if url.starts_with("postgres")
            && let Ok(db) = store::connect(url, 1).await
        {
            let backend: Option<i32> = db
                .query_one_raw(sea_orm::Statement::from_string(
                    DatabaseBackend::Postgres,
                    "SELECT pg_backend_pid() AS pid",
                ))
                .await
                .ok()
                .flatten()
                .and_then(|row| row.try_get("", "pid").ok());
            // Only when that pid is a PostgreSQL process here, and its parent too: a server on another host
            // or in a container of its own numbers its processes apart from this machine's.
            let postgres = |pid: &str| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "postgres")
            };
            postmaster = backend
                .map(|pid| pid.to_string())
                .filter(|pid| postgres(pid))
                .and_then(|pid| status_field(&pid, "PPid:"))
                .filter(|pm| postgres(pm));
            let _ = db.close().await;
        }
        CpuClock {
            postmaster,
            sqlite: url.starts_with("sqlite"),
        }
    }

    fn now(&self) -> CpuUse {
        let postgres = self.postmaster.as_deref().and_then(|pm| {
            // The postmaster's own time and its ended children's (reaped: `cutime`, `cstime`), plus its live
            // children's. A child reaped during the scan would be in neither: the scan is taken again then.
            for _ in 0..10 {
                let own = stat_ticks(pm)?;
                let mut ticks = own[0] + own[1] + own[2] + own[3];
                for entry in std::fs::read_dir("/proc").ok()?.flatten() {
                    let pid = entry.file_name().to_string_lossy().into_owned();
                    if pid.bytes().all(|b| b.is_ascii_digit())
                        && status_field(&pid, "PPid:").as_deref() == Some(pm)
                        && let Some(t) = stat_ticks(&pid)
                    {
                        ticks += t[0] + t[1];
                    }
                }
                if stat_ticks(pm)?[2..] == own[2..] {
                    return Some(ticks / CLOCK_TICKS);
                }
            }
            None
        });
        let this = stat_ticks("self").map_or(0.0, |t| (t[0] + t[1]) / CLOCK_TICKS);
        CpuUse { postgres, this }
    }

    /// Prints the CPU time per task since `before`: PostgreSQL's (when known) and this process's (`this_is`).
    fn per_task(&self, phase: &str, before: CpuUse, tasks: usize, this_is: &str) {
        let after = self.now();
        let ms = |a: f64, b: f64| (a - b) * 1000.0 / tasks as f64;
        let postgres = match (after.postgres, before.postgres) {
            (Some(a), Some(b)) => format!("PostgreSQL {:.3} ms, ", ms(a, b)),
            _ => String::new(),
        };
        let sqlite = if self.sqlite {
            " (SQLite's work included)"
        } else {
            ""
        };
        println!(
            "  CPU per task, {phase}: {postgres}{this_is}{sqlite} {:.3} ms",
            ms(after.this, before.this)
        );
    }
}

/// The kernel's unit of CPU time in `/proc/{pid}/stat` (`USER_HZ`, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// `utime`, `stime`, `cutime` and `cstime` of `/proc/{pid}/stat`, in clock ticks.
fn stat_ticks(pid: &str) -> Option<[f64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces: state is field 3, utime 14.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
    Some([tick(14)?, tick(15)?, tick(16)?, tick(17)?])
}

/// A field of `/proc/{pid}/status`, as written (`PPid:` → the parent's pid).
fn status_field(pid: &str, field: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
}

/// A memory figure of `/proc/{pid}/status` (`VmRSS:`, `VmHWM:`), in MiB (0 when unreadable).
fn status_mib(pid: &str, field: &str) -> f64 {
    status_field(pid, field)
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
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
    if let Ok(bin) = std::env::var("BENCH_SERVER_BIN") {
        return memory_check(&bin, &url).await;
    }
    let seeded = env_or("BENCH_SEED_FINISHED", 0);
    if seeded > 0 {
        let t = Instant::now();
        seed(&url, seeded, env_or("BENCH_SEED_LOGS", 5)).await?;
        println!(
            "seeded {seeded} finished tasks with {} log entries each in {:.1} s",
            env_or("BENCH_SEED_LOGS", 5),
            t.elapsed().as_secs_f64()
        );
    }
    let mut config = Config::for_database(&url);
    config.bind_addr = Some("127.0.0.1:0".to_owned());
    config.auto_start_workers = false;
    // The clients all come from one address: the queue is measured, not the per-client rate limit. The caps on
    // the queue keep their defaults: their admission check is part of every creation.
    config.rate_limit_per_second = 0;
    config.database_max_connections =
        env_or("BENCH_POOL", config.database_max_connections as usize) as u32;
    let app = Application::build(config).await?;
    // What-ifs, applied to the migrated schema before anything runs (say, to measure what an index costs).
    if let Ok(sql) = std::env::var("BENCH_SQL") {
        let db = store::connect(&url, 1).await?;
        // As one string: PostgreSQL runs several statements sent at once, quoted `;` and `$$` bodies included.
        db.execute_unprepared(&sql).await?;
        db.close().await?;
        println!("BENCH_SQL applied: {sql}");
    }
    // The baseline first, on the fresh database: the same life as bare SQL, `workers` connections. (Run after
    // the service, it would meet the dead rows the service left and flatter the ratio.)
    let cpu = CpuClock::new(&url).await;
    let before = cpu.now();
    let raw = raw_cycles(&url, tasks, workers).await?;
    println!("raw SQL insert→claim→complete: {raw:.0} cycles/s");
    cpu.per_task("the baseline", before, tasks, "its clients");
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
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
    let before = start_phase(&url, &cpu).await?;
    let start = Instant::now();
    let lat = each_worker(workers, tasks, |w, n| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let t = Instant::now();
                create(&client, &base, &format!("bench-{w}-{i}")).await;
                lat.push(t.elapsed());
            }
            lat
        }
    })
    .await?
    .concat();
    let create_wall = start.elapsed();
    report("create", lat, create_wall);

    for w in 0..workers {
        register(&client, &base, &format!("bench-{w}"), json!({})).await;
    }

    // Claim and complete until the queue is empty.
    let start = Instant::now();
    let runs = each_worker(workers, tasks, |w, _| {
        let (client, base) = (client.clone(), base.clone());
        async move {
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
                let t = Instant::now();
                complete(&client, &base, &format!("bench-{w}"), &task).await;
                completes.push(t.elapsed());
            }
        }
    })
    .await?;
    let (mut claims, mut completes) = (Vec::new(), Vec::new());
    for (c, d) in runs {
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
    let service_cycle = tasks as f64 / (create_wall + wall).as_secs_f64();
    println!("service create→claim→complete over HTTP: {service_cycle:.0} tasks/s");
    cpu.per_task(
        "the two phases",
        before,
        tasks,
        "the server and its HTTP clients",
    );

    // The same life in the baseline's shape: each worker creates a task, claims one (any: another worker may
    // have taken its own, so a claim that finds nothing is tried again, as the baseline's is), completes it.
    // It runs after the two phases, over the rows they left (the baseline met an empty table). A retry waits
    // (long poll): a claim that found nothing is not asked again before the next wake-up or poll tick.
    let before = start_phase(&url, &cpu).await?;
    let start = Instant::now();
    let empties = each_worker(workers, tasks, |w, n| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let mut empty = 0;
            for i in 0..n {
                create(&client, &base, &format!("cycle-{w}-{i}")).await;
                let mut wait = "";
                let task: Value = loop {
                    let r = client
                        .post(format!("{base}/api/v1/workers/bench-{w}/claim{wait}"))
                        .send()
                        .await
                        .unwrap();
                    if r.status() == 200 {
                        break r.json().await.unwrap();
                    }
                    assert_eq!(r.status(), 204);
                    empty += 1;
                    wait = "?wait_seconds=1";
                };
                complete(&client, &base, &format!("bench-{w}"), &task).await;
            }
            empty
        }
    })
    .await?;
    let empty: usize = empties.iter().sum();
    let interleaved = tasks as f64 / start.elapsed().as_secs_f64();
    println!(
        "service create→claim→complete, each worker in turn (the baseline's shape): {interleaved:.0} tasks/s, {:.0} % of the baseline ({empty} claims found nothing first)",
        interleaved / raw * 100.0
    );
    cpu.per_task(
        "the baseline's shape",
        before,
        tasks,
        "the server and its HTTP clients",
    );

    // The same life once more, in the same shape, without HTTP: each worker calls what the handlers call (the
    // creation with its admission check, the dispatcher's claim and end of a run), as the server's internal
    // workers do (the handlers' metrics too). Against the baseline, what the service's statements cost; against
    // the phase above, what HTTP costs on top. It runs last, over the rows the phases before it left.
    let before = start_phase(&url, &cpu).await?;
    let (direct, empty) = direct_cycles(&state, tasks, workers).await?;
    println!(
        "service create→claim→complete without HTTP (the handlers' calls, the baseline's shape): {direct:.0} tasks/s, {:.0} % of the baseline ({empty} claims found nothing first); over HTTP {:.0} % of it",
        direct / raw * 100.0,
        interleaved / direct * 100.0
    );
    cpu.per_task(
        "without HTTP",
        before,
        tasks,
        "the server's calls and their callers",
    );

    // Heartbeats from every worker, as fast as they go.
    let seconds = Duration::from_secs(env_or("BENCH_SECONDS", 3) as u64);
    flat_out("heartbeat", workers, seconds, |w| {
        client
            .post(format!("{base}/api/v1/workers/bench-{w}/heartbeat"))
            .json(&json!({"status": "idle"}))
    })
    .await?;
    // The floor under every figure above: a request that reaches the API and does no database work at all.
    flat_out("no-db request", workers, seconds, |_| {
        client.get(format!("{base}/api/v1/auth/whoami"))
    })
    .await?;

    println!(
        "raw SQL insert→claim→complete (above): {raw:.0} cycles/s; the service does {:.0} % of it",
        100.0 * service_cycle / raw
    );

    // What operators and Prometheus read: the whole queue's figures.
    for path in ["/health", "/metrics"] {
        let mut lat = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let r = client.get(format!("{base}{path}")).send().await?;
            assert!(r.status().is_success());
            r.bytes().await?;
            lat.push(t.elapsed());
        }
        report_ms(path, lat);
    }

    // Dispatch: a task created while a claim waits, until the claim answers with it.
    let rounds = 50;
    // Its floor: a request with no database work, sent after the same pause as each round's creation. After a
    // pause every process involved is asleep, and a wake-up costs far more than under load.
    let mut floor = Vec::new();
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t = Instant::now();
        let r = client
            .get(format!("{base}/api/v1/auth/whoami"))
            .send()
            .await?;
        assert!(r.status().is_success());
        r.bytes().await?;
        floor.push(t.elapsed());
    }
    report_ms("no-db request after a pause", floor);
    let local = dispatch_latency(&client, &base, &base, rounds).await;
    report_dispatch("one replica", local);
    if url.starts_with("postgres") {
        let mut other = Config::for_database(&url);
        other.bind_addr = Some("127.0.0.1:0".to_owned());
        other.auto_start_workers = false;
        other.rate_limit_per_second = 0;
        let b = Application::build(other).await?;
        let base_b = format!("http://127.0.0.1:{}", b.port());
        tokio::spawn(b.run_until_stopped(std::future::pending()));
        // Let its listener connect.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let across = dispatch_latency(&client, &base, &base_b, rounds).await;
        report_dispatch("replica A → B", across);
        // The same while a claim for other problems waits on A: A's announcement then waits for its own claims
        // to look first (`LOCAL_FIRST`), as it does wherever workers long-poll on every replica.
        let elsewhere = format!("elsewhere-{}", uuid::Uuid::new_v4().simple());
        register(
            &client,
            &base,
            &elsewhere,
            json!({"supported_problems": ["elsewhere-*"]}),
        )
        .await;
        let waiting_on_a = {
            let (client, url) = (
                client.clone(),
                format!("{base}/api/v1/workers/{elsewhere}/claim?wait_seconds=60"),
            );
            tokio::spawn(async move {
                loop {
                    let r = client.post(&url).send().await.unwrap();
                    assert_eq!(r.status(), 204, "no task is for this worker");
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let across = dispatch_latency(&client, &base, &base_b, rounds).await;
        report_dispatch("A → B, others waiting on A", across);
        assert!(
            !waiting_on_a.is_finished(),
            "the claim on A stopped waiting"
        );
        waiting_on_a.abort();
    }
    Ok(())
}

/// `clients` clients sending the request `make(client)` makes, one after another, for `seconds`; reports
/// the rate and latencies. Every answer must be 200.
async fn flat_out(
    name: &str,
    clients: usize,
    seconds: Duration,
    make: impl Fn(usize) -> reqwest::RequestBuilder,
) -> anyhow::Result<()> {
    let until = Instant::now() + seconds;
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let (client, request) = make(c).build_split();
        let request = request?;
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let r = client
                    .execute(
                        request
                            .try_clone()
                            .expect("a request with a body in memory"),
                    )
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await?);
    }
    report(name, lat, start.elapsed());
    Ok(())
}

fn report_dispatch(name: &str, rounds: Vec<(Duration, Duration)>) {
    let (to_claim, to_create): (Vec<_>, Vec<_>) = rounds.into_iter().unzip();
    report_ms(&format!("create → claim, {name}"), to_claim);
    report_ms(&format!("  (create alone, {name})"), to_create);
}

fn report_ms(name: &str, mut lat: Vec<Duration>) {
    lat.sort();
    println!(
        "{name:<30} p50 {:>6.2} ms  p90 {:>6.2} ms  max {:>6.2} ms  ({} rounds)",
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 1.0),
        lat.len()
    );
}

/// Rounds of: a worker on `claim_base` waits for a task; a task is created through `create_base`; the time from
/// the creation's request to the claim's answer, and to the creation's own answer (the creation's commit is
/// part of the first: the claim cannot see the task before it).
async fn dispatch_latency(
    client: &reqwest::Client,
    create_base: &str,
    claim_base: &str,
    rounds: usize,
) -> Vec<(Duration, Duration)> {
    let worker = format!("dispatch-{}", uuid::Uuid::new_v4().simple());
    // Only these rounds' tasks.
    register(
        client,
        claim_base,
        &worker,
        json!({"supported_problems": ["dispatch-*"]}),
    )
    .await;
    let mut out = Vec::new();
    for i in 0..rounds {
        let waiting = {
            let (client, url) = (
                client.clone(),
                format!("{claim_base}/api/v1/workers/{worker}/claim?wait_seconds=10"),
            );
            tokio::spawn(async move {
                let r = client.post(url).send().await.unwrap();
                let at = Instant::now();
                (r.json::<Value>().await.unwrap(), at)
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let sent = Instant::now();
        let r = client
            .post(format!("{create_base}/api/v1/tasks"))
            .json(&json!({"problem_id": format!("dispatch-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let created = Instant::now();
        let (task, answered) = waiting.await.unwrap();
        out.push((answered - sent, created - sent));
        complete(client, claim_base, &worker, &task).await;
    }
    out
}

/// Registers `worker` on `base` with `capabilities`; the answer must be a success.
async fn register(client: &reqwest::Client, base: &str, worker: &str, capabilities: Value) {
    let r = client
        .post(format!("{base}/api/v1/workers/register"))
        .json(&json!({"worker_id": worker, "backend_type": "kind", "capabilities": capabilities}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Creates a task of `problem_id` with the parameters an agent run has; the answer must be 201.
async fn create(client: &reqwest::Client, base: &str, problem_id: &str) {
    let r = client
        .post(format!("{base}/api/v1/tasks"))
        .json(&json!({"problem_id": problem_id, "parameters": {"agent_config": {"model": "m"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// Completes the run `task` (a claim's answer) as its worker; the answer must be 200.
async fn complete(client: &reqwest::Client, base: &str, worker: &str, task: &Value) {
    let r = client
        .post(format!(
            "{base}/api/v1/workers/{worker}/tasks/{}/complete",
            task["id"].as_str().unwrap()
        ))
        .json(&json!({"attempt": task["attempt"], "lease_id": task["lease_id"], "result": {"success": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `tasks` lives of a task through the calls the handlers make, without HTTP, from `workers` concurrent
/// callers (the registered workers `bench-{w}`), each creating, claiming (any task; a claim that found nothing
/// is tried again, as a long poll) and completing in turn, as the HTTP phase in the baseline's shape does;
/// tasks per second, and how many claims found nothing first.
async fn direct_cycles(
    state: &AppState,
    tasks: usize,
    workers: usize,
) -> anyhow::Result<(f64, usize)> {
    let start = Instant::now();
    let empties = each_worker(workers, tasks, |w, n| {
        let state = state.clone();
        async move {
            let worker = format!("bench-{w}");
            let never = CancellationToken::new();
            let mut empty = 0;
            for i in 0..n {
                let req: CreateTaskRequest = serde_json::from_value(
                    json!({"problem_id": format!("direct-{w}-{i}"), "parameters": {"agent_config": {"model": "m"}}}),
                )
                .unwrap();
                let parameters =
                    params::effective(&req.parameters, state.config.param_defaults()).unwrap();
                let (_, created) = store::tasks::create(
                    &state.db,
                    store::tasks::NewTask {
                        problem_id: req.problem_id.into_inner(),
                        parameters,
                        priority: req.priority,
                        idempotency: None,
                        created_by: None,
                        admission: state.admission.clone(),
                    },
                )
                .await
                .unwrap();
                assert!(matches!(created, store::tasks::Created::New));
                state.metrics.task_created();
                state.dispatcher.created();
                // As over HTTP: the first claim does not wait; one that found nothing is tried again as a long
                // poll.
                let mut wait = Duration::ZERO;
                let task = loop {
                    if let Some(t) = state.dispatcher.claim(&worker, wait, &never).await.unwrap() {
                        break t;
                    }
                    empty += 1;
                    wait = Duration::from_secs(1);
                };
                let run = RunRef::reported(&worker, task.attempt, task.lease_id.unwrap());
                let result = [("success".to_owned(), json!(true))].into_iter().collect();
                state
                    .dispatcher
                    .finish(task.id, run, Outcome::Completed(result))
                    .await
                    .unwrap();
            }
            empty
        }
    })
    .await?;
    let empty: usize = empties.iter().sum();
    Ok((tasks as f64 / start.elapsed().as_secs_f64(), empty))
}

/// `tasks` lives of a task as three bare statements (three commits), from `clients` connections at once;
/// cycles per second.
async fn raw_cycles(url: &str, tasks: usize, clients: usize) -> anyhow::Result<f64> {
    let db = store::connect(url, clients as u32).await?;
    let pg = db.get_database_backend() == DatabaseBackend::Postgres;
    let (insert, claim, complete) = if pg {
        (
            "INSERT INTO tasks (id, problem_id, status, priority, parameters, created_at, updated_at) \
             VALUES ($1, $2, 'pending', 0, $3, $4, $4)",
            "UPDATE tasks SET status = 'running', worker_id = $1, attempt = attempt + 1, started_at = $2, \
             updated_at = $2 WHERE id = (SELECT id FROM tasks WHERE status = 'pending' \
             ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id",
            "UPDATE tasks SET status = 'completed', result = $1, completed_at = $2, updated_at = $2 \
             WHERE id = $3 AND status = 'running'",
        )
    } else {
        (
            "INSERT INTO tasks (id, problem_id, status, priority, parameters, created_at, updated_at) \
             VALUES (?1, ?2, 'pending', 0, ?3, ?4, ?4)",
            "UPDATE tasks SET status = 'running', worker_id = ?1, attempt = attempt + 1, started_at = ?2, \
             updated_at = ?2 WHERE id = (SELECT id FROM tasks INDEXED BY idx_tasks_pending_claim \
             WHERE status = 'pending' ORDER BY priority DESC, created_at, id LIMIT 1) RETURNING id",
            "UPDATE tasks SET status = 'completed', result = ?1, completed_at = ?2, updated_at = ?2 \
             WHERE id = ?3 AND status = 'running'",
        )
    };
    let start = Instant::now();
    each_worker(clients, tasks, |c, n| {
        let db = db.clone();
        async move {
            // The statements go to the database as pgbench's would: on PostgreSQL each client holds a connection
            // of its own; on SQLite they share the one connection, passed from one client to the next as the
            // service's scripts pass it (store::script). Neither pays sqlx's test of a connection going back to
            // its pool, which the service's hot paths do not pay either (store::hot).
            let mut held = if pg {
                Some(db.get_postgres_connection_pool().acquire().await.unwrap())
            } else {
                None
            };
            for i in 0..n {
                let now = store::now();
                run(
                    &db,
                    held.as_mut(),
                    insert,
                    vec![
                        uuid::Uuid::new_v4().into(),
                        format!("raw-{c}-{i}").into(),
                        json!({"max_steps": 30, "timeout": 600}).into(),
                        now.into(),
                    ],
                )
                .await;
                // SKIP LOCKED may find every pending row locked by the other clients' claims: try again, as
                // a worker would, so that every task inserted is claimed and completed.
                let id = loop {
                    let rows = run(
                        &db,
                        held.as_mut(),
                        claim,
                        vec![format!("raw-{c}").into(), store::now().into()],
                    )
                    .await;
                    if let Some(row) = rows.first() {
                        break row.try_get_by_index::<uuid::Uuid>(0).unwrap();
                    }
                    tokio::task::yield_now().await;
                };
                run(
                    &db,
                    held.as_mut(),
                    complete,
                    vec![
                        json!({"success": true}).into(),
                        store::now().into(),
                        id.into(),
                    ],
                )
                .await;
            }
        }
    })
    .await?;
    Ok(tasks as f64 / start.elapsed().as_secs_f64())
}

/// Before a phase on PostgreSQL: vacuums the queue's tables, so that the phase meets them as autovacuum leaves
/// them between bursts, not with the dead row versions and index entries the phases before it left (which the
/// baseline, on a fresh table, never meets). The rows those phases finished stay. Then reads the CPU count the
/// phase starts from.
async fn start_phase(url: &str, cpu: &CpuClock) -> anyhow::Result<CpuUse> {
    if url.starts_with("postgres") {
        let db = store::connect(url, 1).await?;
        db.execute_unprepared("VACUUM (ANALYZE) tasks, task_logs, workers")
            .await?;
        db.close().await?;
    }
    Ok(cpu.now())
}

/// Runs one statement of the baseline, in a transaction of its own: on the connection `held` (PostgreSQL), or
/// as a one-statement script (SQLite); the rows it answered.
async fn run(
    db: &sea_orm::DatabaseConnection,
    held: Option<&mut PoolConnection<Postgres>>,
    sql: &'static str,
    values: Vec<sea_orm::Value>,
) -> Vec<sea_orm::QueryResult> {
    match held {
        Some(conn) => sqlx::query_with(sql, SqlxValues(sea_orm::Values(values)))
            .fetch_all(&mut **conn)
            .await
            .unwrap()
            .into_iter()
            .map(sea_orm::QueryResult::from)
            .collect(),
        None => {
            let mut script = store::script::Script::then();
            script.push(sql, values);
            store::script::run(db, script).await.unwrap().remove(0)
        }
    }
}

/// Fills the database with `tasks` tasks finished a day ago, each with `logs` log entries, in a few
/// statements (what a long-running service accumulates; with the default retention it would keep a month).
async fn seed(url: &str, tasks: usize, logs: usize) -> anyhow::Result<()> {
    let db = store::connect(url, 2).await?;
    let pg = db.get_database_backend() == DatabaseBackend::Postgres;
    let chunk = 100_000;
    let mut done = 0;
    while done < tasks {
        let n = chunk.min(tasks - done);
        let sql = if pg {
            format!(
                "INSERT INTO tasks (id, problem_id, status, priority, parameters, result, attempt, created_at, \
                 updated_at, started_at, completed_at) \
                 SELECT gen_random_uuid(), 'seed-' || g, 'completed', 0, '{{\"max_steps\": 30}}'::jsonb, \
                 '{{\"success\": true}}'::jsonb, 1, now() - interval '1 day', now() - interval '1 day', \
                 now() - interval '1 day', now() - interval '1 day' FROM generate_series({}, {}) g",
                done + 1,
                done + n
            )
        } else {
            format!(
                "WITH RECURSIVE g(n) AS (SELECT {} UNION ALL SELECT n + 1 FROM g WHERE n < {}) \
                 INSERT INTO tasks (id, problem_id, status, priority, parameters, result, attempt, created_at, \
                 updated_at, started_at, completed_at) \
                 SELECT randomblob(16), 'seed-' || n, 'completed', 0, '{{\"max_steps\": 30}}', \
                 '{{\"success\": true}}', 1, strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-1 day'), \
                 strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-1 day'), \
                 strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-1 day'), \
                 strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-1 day') FROM g",
                done + 1,
                done + n
            )
        };
        db.execute_unprepared(&sql).await?;
        done += n;
    }
    if logs > 0 {
        let ts = if pg {
            "now() - interval '1 day'"
        } else {
            "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-1 day')"
        };
        let series = if pg {
            format!("generate_series(1, {logs}) k")
        } else {
            format!(
                "(WITH RECURSIVE s(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM s WHERE k < {logs}) SELECT k FROM s) ks"
            )
        };
        db.execute_unprepared(&format!(
            "INSERT INTO task_logs (task_id, timestamp, level, severity, message, attempt) \
             SELECT t.id, {ts}, 'info', 20, 'seeded entry', 1 FROM tasks t CROSS JOIN {series} \
             WHERE t.problem_id LIKE 'seed-%'"
        ))
        .await?;
    }
    if pg {
        db.execute_unprepared("ANALYZE").await?;
    }
    db.close().await?;
    Ok(())
}

/// The server binary as a process of its own: 100,000 pending tasks, and 1,000 claims waiting (for tasks of
/// another problem, so that they wait); its resident memory then.
async fn memory_check(bin: &str, url: &str) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = tokio::process::Command::new(bin)
        .env("DATABASE_URL", url)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("NUM_INTERNAL_WORKERS", "0")
        .env("RATE_LIMIT_PER_SECOND", "0")
        .env("MAX_PENDING_TASKS", "0")
        .env("MAX_ACTIVE_TASKS_PER_TOKEN", "0")
        .env("TASK_RUNNER", "simulate")
        .env("LOG_LEVEL", "error")
        .env(
            "MALLOC_ARENA_MAX",
            std::env::var("MALLOC_ARENA_MAX").unwrap_or_default(),
        )
        .kill_on_drop(true)
        .spawn()?;
    let pid = server.id().unwrap_or(0);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1100)
        .timeout(Duration::from_secs(120))
        .build()?;
    for _ in 0..100 {
        if client.get(format!("{base}/ready")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss = || status_mib(&pid.to_string(), "VmRSS:");
    println!("server RSS at start: {:.0} MiB", rss());
    // In batches of 1,000 (a batch of 10,000 is a 1 MiB body, parsed twice, whose peak the allocator keeps).
    let batches = env_or("BENCH_BACKLOG_BATCHES", 100);
    for b in 0..batches {
        let tasks: Vec<Value> = (0..1_000)
            .map(|i| json!({"problem_id": format!("backlog-{b}-{i}")}))
            .collect();
        let r = client
            .post(format!("{base}/api/v1/batches"))
            .json(&json!({"tasks": tasks}))
            .send()
            .await?;
        assert_eq!(r.status(), 201, "{}", r.text().await?);
    }
    let backlog = batches * 1_000;
    println!("server RSS with {backlog} pending tasks: {:.0} MiB", rss());
    // Four workers of 250 slots (the most a worker may have), each with its claims waiting.
    for w in 0..4 {
        register(
            &client,
            &base,
            &format!("waiting-{w}"),
            json!({"max_parallel_tasks": 250, "supported_problems": ["elsewhere-*"]}),
        )
        .await;
    }
    let mut polls = Vec::new();
    for i in 0..1000 {
        let (client, url) = (
            client.clone(),
            format!(
                "{base}/api/v1/workers/waiting-{}/claim?wait_seconds=30",
                i % 4
            ),
        );
        polls.push(tokio::spawn(async move {
            client.post(url).send().await.map(|r| r.status())
        }));
    }
    for after in [5, 15] {
        tokio::time::sleep(Duration::from_secs(if after == 5 { 5 } else { 10 })).await;
        let waiting = polls.iter().filter(|p| !p.is_finished()).count();
        println!(
            "server RSS with {backlog} pending tasks and {waiting} claims waiting ({after} s after they came): {:.0} MiB",
            rss()
        );
    }
    server.kill().await.ok();
    for p in polls {
        let _ = p.await;
    }
    Ok(())
}
