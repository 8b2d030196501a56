//! `task-executor`: the researchers' command line over the HTTP API — submit a task or a campaign, follow it
//! live, read its logs, cancel it, and get its results as a table or a file. It lives in this crate, beside
//! the daemon, because both are HTTP clients of the same API with the same settings (server URL and token).

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use task_executor_shared::api::ErrorBody;

use crate::config::ServerArgs;

#[derive(Debug, Parser)]
#[command(
    name = "task-executor",
    version,
    about = "Submit AIOpsLab runs and campaigns to the task executor, follow them live, and get their results."
)]
pub struct Cli {
    #[command(flatten)]
    pub api: ServerArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit one problem, a campaign from a file (JSON or YAML: the body of POST /api/v1/batches), or a
    /// matrix of problems × agents × repetitions. Prints the task or batch id.
    Submit(Submit),
    /// A task's or a batch's state (without an id: the latest batches).
    Status { id: Option<String> },
    /// Follow a task (its state changes and log, live) or a batch (a progress line) until it is finished;
    /// exits 0 when everything completed successfully, 1 otherwise.
    #[command(alias = "follow")]
    Watch { id: String },
    /// A task's log.
    Logs {
        task_id: String,
        /// Only entries of this level and more severe (debug, info, warning, error, critical).
        #[arg(long)]
        level: Option<String>,
    },
    /// Cancel a task, or what has not finished of a batch.
    Cancel { id: String },
    /// Two batches side by side, problem by problem: each one's success rate with its 95 % Wilson
    /// interval and runs, and the difference (B − A). Infrastructure failures and cancelled runs are left out.
    Compare { batch_a: String, batch_b: String },
    /// A batch's results: a table, or CSV / JSON lines / JSON (to a file with --output).
    Results {
        batch_id: String,
        #[arg(long, value_enum, default_value = "table")]
        format: ResultsFormat,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ResultsFormat {
    Table,
    Csv,
    Jsonl,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Submit {
    /// The problem to run (one task).
    pub problem: Option<String>,
    /// A campaign file: JSON or YAML (`.yaml`, `.yml`), the body of POST /api/v1/batches.
    #[arg(long, conflicts_with_all = ["problem", "problems"])]
    pub file: Option<PathBuf>,
    /// A matrix: these problems (comma-separated) …
    #[arg(long, value_delimiter = ',', conflicts_with = "problem")]
    pub problems: Vec<String>,
    /// … × these agents by name (repeatable; each becomes `agent_config.agent`) …
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// … or × these agent configurations as JSON objects (repeatable) …
    #[arg(long = "agent-config")]
    pub agent_configs: Vec<String>,
    /// … × this many repetitions.
    #[arg(long)]
    pub repetitions: Option<u32>,
    /// The parameters, as a JSON object.
    #[arg(long)]
    pub parameters: Option<String>,
    /// One parameter, KEY=VALUE (VALUE read as JSON when it is JSON, else as text); repeatable.
    #[arg(long = "param")]
    pub params: Vec<String>,
    #[arg(long)]
    pub priority: Option<i32>,
    /// A name for the batch.
    #[arg(long)]
    pub name: Option<String>,
    /// Makes the submission safe to repeat: the same key and request give the same task or batch.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Then follow it, like `watch`.
    #[arg(long)]
    pub follow: bool,
}

/// The API, as this command line uses it.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(cli: &Cli) -> anyhow::Result<Api> {
        let token = cli.api.token()?.map(|t| t.expose().to_owned());
        let http = reqwest::Client::builder()
            .user_agent(concat!("task-executor/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            // Streams send a keep-alive every 15 s: a connection silent for longer is dead (and resumed).
            .read_timeout(Duration::from_secs(45))
            .build()?;
        Ok(Api {
            http,
            base: cli.api.server(),
            token,
        })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the API server at {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => bail!(ApiFailure {
                status,
                kind: e.kind,
                detail: e.detail
            }),
            Err(_) => bail!(
                "the API server answered {status}: {}",
                text.chars().take(300).collect::<String>()
            ),
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .send(
                self.request(Method::GET, path)
                    .timeout(Duration::from_secs(60)),
            )
            .await?
            .json()
            .await?)
    }

    async fn post(
        &self,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut r = self
            .request(Method::POST, path)
            .timeout(Duration::from_secs(120));
        if let Some(b) = body {
            r = r.json(b);
        }
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        Ok(self.send(r).await?.json().await?)
    }

    /// Whether an id names a task (else a batch): asks the server.
    async fn kind_of(&self, id: &str) -> anyhow::Result<Kind> {
        match self.get(&format!("/api/v1/tasks/{id}")).await {
            Ok(t) => Ok(Kind::Task(t)),
            Err(e)
                if is_status(&e, StatusCode::NOT_FOUND)
                    || is_status(&e, StatusCode::UNPROCESSABLE_ENTITY) =>
            {
                Ok(Kind::Batch(
                    self.get(&format!("/api/v1/batches/{id}"))
                        .await
                        .map_err(|e| {
                            if is_status(&e, StatusCode::NOT_FOUND) {
                                anyhow::anyhow!("no task or batch has the id {id}")
                            } else {
                                e
                            }
                        })?,
                ))
            }
            Err(e) => Err(e),
        }
    }
}

enum Kind {
    Task(Value),
    Batch(Value),
}

/// An error answer of the API server.
#[derive(Debug)]
struct ApiFailure {
    status: StatusCode,
    kind: String,
    detail: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, HTTP {})",
            self.detail,
            self.kind,
            self.status.as_u16()
        )
    }
}

impl std::error::Error for ApiFailure {}

fn is_status(e: &anyhow::Error, status: StatusCode) -> bool {
    e.downcast_ref::<ApiFailure>()
        .is_some_and(|f| f.status == status)
}

/// Runs the command; `Ok(false)` when it finished but what it watched did not all succeed.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let api = Api::new(&cli)?;
    match cli.command {
        Command::Submit(s) => submit(&api, s).await,
        Command::Status { id } => status(&api, id.as_deref()).await.map(|_| true),
        Command::Watch { id } => watch(&api, &id).await,
        Command::Logs { task_id, level } => {
            logs(&api, &task_id, level.as_deref()).await.map(|_| true)
        }
        Command::Cancel { id } => cancel(&api, &id).await.map(|_| true),
        Command::Compare { batch_a, batch_b } => {
            compare(&api, &batch_a, &batch_b).await.map(|_| true)
        }
        Command::Results {
            batch_id,
            format,
            output,
        } => results(&api, &batch_id, format, output).await.map(|_| true),
    }
}

/// A `--param KEY=VALUE`: the value as JSON when it parses, else as text.
fn param(kv: &str) -> anyhow::Result<(String, Value)> {
    let (k, v) = kv
        .split_once('=')
        .with_context(|| format!("--param {kv}: expected KEY=VALUE"))?;
    Ok((
        k.to_owned(),
        serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned())),
    ))
}

fn parameters(s: &Submit) -> anyhow::Result<Option<Map<String, Value>>> {
    let mut out = match &s.parameters {
        Some(text) => {
            match serde_json::from_str(text).context("--parameters must be a JSON object")? {
                Value::Object(m) => Some(m),
                _ => bail!("--parameters must be a JSON object"),
            }
        }
        None => None,
    };
    for kv in &s.params {
        let (k, v) = param(kv)?;
        out.get_or_insert_with(Map::new).insert(k, v);
    }
    Ok(out)
}

async fn submit(api: &Api, s: Submit) -> anyhow::Result<bool> {
    let params = parameters(&s)?;
    let key = s.idempotency_key.as_deref();
    let (id, is_batch) = if let Some(problem) = &s.problem {
        let mut body = json!({"problem_id": problem});
        if let Some(p) = params {
            body["parameters"] = Value::Object(p);
        }
        if let Some(p) = s.priority {
            body["priority"] = json!(p);
        }
        let t = api.post("/api/v1/tasks", Some(&body), key).await?;
        (t["id"].as_str().unwrap_or_default().to_owned(), false)
    } else {
        let body = if let Some(file) = &s.file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
            let mut v: Value = if yaml {
                serde_norway::from_str(&text)
                    .with_context(|| format!("{} is not valid YAML", file.display()))?
            } else {
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid JSON", file.display()))?
            };
            if let Some(n) = &s.name {
                v["name"] = json!(n);
            }
            v
        } else if !s.problems.is_empty() {
            let mut configs: Vec<Value> = s.agents.iter().map(|a| json!({"agent": a})).collect();
            for c in &s.agent_configs {
                configs.push(
                    serde_json::from_str(c)
                        .with_context(|| format!("--agent-config {c}: not JSON"))?,
                );
            }
            let mut body = json!({"problems": s.problems});
            if !configs.is_empty() {
                body["agent_configs"] = Value::Array(configs);
            }
            if let Some(r) = s.repetitions {
                body["repetitions"] = json!(r);
            }
            if let Some(p) = params {
                body["parameters"] = Value::Object(p);
            }
            if let Some(p) = s.priority {
                body["priority"] = json!(p);
            }
            if let Some(n) = &s.name {
                body["name"] = json!(n);
            }
            body
        } else {
            bail!("say what to run: a PROBLEM, --file FILE, or --problems P1,P2,…");
        };
        let b = api.post("/api/v1/batches", Some(&body), key).await?;
        eprintln!(
            "batch {} created: {} tasks",
            b["id"].as_str().unwrap_or_default(),
            b["task_count"]
        );
        (b["id"].as_str().unwrap_or_default().to_owned(), true)
    };
    println!("{id}");
    if !s.follow {
        return Ok(true);
    }
    if is_batch {
        watch_batch(api, &id).await
    } else {
        watch_task(api, &id).await
    }
}

fn counts_line(b: &Value) -> String {
    let c = &b["counts"];
    let n = |k: &str| c[k].as_i64().unwrap_or(0);
    format!(
        "{}/{} finished · {} succeeded · {} pending · {} running · {} failed · {} timeout · {} cancelled",
        b["finished"],
        b["task_count"],
        b["succeeded"],
        n("pending"),
        n("running"),
        n("failed"),
        n("timeout"),
        n("cancelled")
    )
}

async fn status(api: &Api, id: Option<&str>) -> anyhow::Result<()> {
    let Some(id) = id else {
        let list = api.get("/api/v1/batches?limit=20").await?;
        for b in list.as_array().into_iter().flatten() {
            println!(
                "{}  {:<24} {}",
                b["id"].as_str().unwrap_or_default(),
                b["name"].as_str().unwrap_or("-"),
                counts_line(b)
            );
        }
        return Ok(());
    };
    match api.kind_of(id).await? {
        Kind::Task(t) => {
            println!("task      {}", t["id"].as_str().unwrap_or_default());
            println!("problem   {}", t["problem_id"].as_str().unwrap_or_default());
            println!("status    {}", t["status"].as_str().unwrap_or_default());
            println!("attempt   {}", t["attempt"]);
            if let Some(w) = t["worker_id"].as_str() {
                println!("worker    {w}");
            }
            if !t["result"].is_null() {
                println!("result    {}", t["result"]);
            }
        }
        Kind::Batch(b) => {
            println!(
                "batch     {} {}",
                b["id"].as_str().unwrap_or_default(),
                b["name"]
                    .as_str()
                    .map(|n| format!("({n})"))
                    .unwrap_or_default()
            );
            println!("progress  {}", counts_line(&b));
            if let Some(r) = b["success_rate"].as_f64() {
                println!("success   {:.1}%", r * 100.0);
            }
        }
    }
    Ok(())
}

/// Reads a Server-Sent Events stream, resuming after the last `seq` when the connection drops, and gives
/// each event's JSON to `on_event` until it returns `false` or the server ends the stream.
async fn follow_stream(
    api: &Api,
    path: &str,
    mut on_event: impl FnMut(&Value) -> bool,
) -> anyhow::Result<()> {
    let mut last: Option<i64> = None;
    let mut failures = 0;
    loop {
        let mut req = api.request(Method::GET, path);
        if let Some(seq) = last {
            req = req.header("Last-Event-ID", seq.to_string());
        }
        let resp = match api.send(req).await {
            // A resume after the end of a finished task: nothing more.
            Ok(r) if r.status() == StatusCode::NO_CONTENT => return Ok(()),
            Ok(r) => r,
            Err(e) if e.downcast_ref::<ApiFailure>().is_some() => return Err(e),
            Err(e) => {
                failures += 1;
                if failures > 30 {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut body = resp.bytes_stream();
        // Bytes, decoded a whole message at a time: a chunk may end inside a multi-byte character.
        let mut buf: Vec<u8> = Vec::new();
        let mut ended = false;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            failures = 0;
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = buf.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&raw);
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if let Some(seq) = v["seq"].as_i64() {
                    last = Some(seq);
                }
                if !on_event(&v) {
                    return Ok(());
                }
                ended |= v["type"] == "end";
            }
        }
        if ended {
            return Ok(());
        }
        // The connection dropped: resume after the last event seen.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn watch(api: &Api, id: &str) -> anyhow::Result<bool> {
    match api.kind_of(id).await? {
        Kind::Task(_) => watch_task(api, id).await,
        Kind::Batch(_) => watch_batch(api, id).await,
    }
}

async fn watch_task(api: &Api, id: &str) -> anyhow::Result<bool> {
    let mut final_status = None;
    let mut out = std::io::stdout();
    follow_stream(api, &format!("/api/v1/tasks/{id}/events"), |e| {
        let at = e["timestamp"].as_str().unwrap_or_default();
        let at = at.get(11..19).unwrap_or(at);
        let _ = match e["type"].as_str() {
            Some("status") => writeln!(
                out,
                "{at} == {}{}",
                e["status"].as_str().unwrap_or_default(),
                e["message"]
                    .as_str()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            Some("log") => writeln!(
                out,
                "{at} [{}] {}",
                e["level"].as_str().unwrap_or("info"),
                e["message"].as_str().unwrap_or_default()
            ),
            Some("end") => {
                final_status = e["status"].as_str().map(str::to_owned);
                writeln!(
                    out,
                    "{at} == finished: {}",
                    e["status"].as_str().unwrap_or_default()
                )
            }
            _ => Ok(()),
        };
        let _ = out.flush();
        true
    })
    .await?;
    let t = api.get(&format!("/api/v1/tasks/{id}")).await?;
    Ok(final_status.as_deref() == Some("completed") && t["result"]["success"] != false)
}

async fn watch_batch(api: &Api, id: &str) -> anyhow::Result<bool> {
    let path = format!("/api/v1/batches/{id}");
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let show = |b: &Value| {
        let total = b["task_count"].as_i64().unwrap_or(0).max(1);
        let done = b["finished"].as_i64().unwrap_or(0);
        let width = 30;
        let filled = (done * width / total) as usize;
        let bar = format!(
            "[{}{}]",
            "#".repeat(filled),
            "-".repeat(width as usize - filled)
        );
        if tty {
            eprint!("\r{bar} {}   ", counts_line(b));
        } else {
            eprintln!("{bar} {}", counts_line(b));
        }
    };
    // Each state change of the batch's tasks (from its event stream) refreshes the counts; a poll every 5 s
    // covers a change between a refresh and the stream's start.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let follower = {
        let api = api.clone();
        let events = format!("/api/v1/events?batch_id={id}");
        tokio::spawn(async move {
            let _ = follow_stream(&api, &events, |_| {
                let _ = tx.try_send(());
                true
            })
            .await;
        })
    };
    let finished = |b: &Value| b["finished"] == b["task_count"];
    let b = loop {
        let b = api.get(&path).await?;
        show(&b);
        if finished(&b) {
            break b;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
    };
    follower.abort();
    if tty {
        eprintln!();
    }
    println!("{}", counts_line(&b));
    Ok(b["succeeded"] == b["task_count"])
}

async fn logs(api: &Api, id: &str, level: Option<&str>) -> anyhow::Result<()> {
    let mut offset = 0;
    let mut out = std::io::stdout().lock();
    loop {
        let mut path = format!("/api/v1/tasks/{id}/logs?limit=1000&offset={offset}");
        if let Some(l) = level {
            path.push_str(&format!("&level={l}"));
        }
        let page = api.get(&path).await?;
        let entries = page.as_array().cloned().unwrap_or_default();
        for e in &entries {
            writeln!(
                out,
                "{} [{}] {}",
                e["timestamp"].as_str().unwrap_or_default(),
                e["level"].as_str().unwrap_or_default(),
                e["message"].as_str().unwrap_or_default()
            )?;
        }
        if entries.len() < 1000 {
            return Ok(());
        }
        offset += entries.len();
    }
}

async fn cancel(api: &Api, id: &str) -> anyhow::Result<()> {
    match api.kind_of(id).await? {
        Kind::Task(_) => {
            let t = api
                .post(&format!("/api/v1/tasks/{id}/cancel"), None, None)
                .await?;
            println!(
                "task {id}: {}",
                t["message"].as_str().unwrap_or("cancelled")
            );
        }
        Kind::Batch(_) => {
            let r = api
                .post(&format!("/api/v1/batches/{id}/cancel"), None, None)
                .await?;
            println!("batch {id}: {} tasks cancelled", r["cancelled"]);
        }
    }
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() != 0.0 => format!("{f:.2}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

async fn results(
    api: &Api,
    id: &str,
    format: ResultsFormat,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut sink: Box<dyn Write> = match &output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let wire = match format {
        ResultsFormat::Table | ResultsFormat::Json => "json",
        ResultsFormat::Csv => "csv",
        ResultsFormat::Jsonl => "jsonl",
    };
    let resp = api
        .send(api.request(
            Method::GET,
            &format!("/api/v1/batches/{id}/results?format={wire}"),
        ))
        .await?;
    if let ResultsFormat::Table = format {
        let rows: Vec<Value> = resp.json().await?;
        let cols = [
            ("problem_id", "PROBLEM"),
            ("agent", "AGENT"),
            ("model", "MODEL"),
            ("repetition", "REP"),
            ("status", "STATUS"),
            ("success", "SUCCESS"),
            ("duration_seconds", "SECONDS"),
            ("steps", "STEPS"),
            ("tokens", "TOKENS"),
        ];
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| cols.iter().map(|(k, _)| cell(&r[*k])).collect())
            .collect();
        let headers: Vec<&str> = cols.iter().map(|(_, h)| *h).collect();
        print_table(&mut sink, &headers, &table)?;
    } else {
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            sink.write_all(&chunk.context("the results stopped midway")?)?;
        }
    }
    sink.flush()?;
    if let Some(p) = output {
        eprintln!("results written to {}", p.display());
    }
    Ok(())
}

/// Columns padded to their widest cell, two spaces apart, under their headers.
fn print_table(
    sink: &mut dyn Write,
    headers: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(
        sink,
        "{}",
        line(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>())
    )?;
    for r in rows {
        writeln!(sink, "{}", line(r))?;
    }
    Ok(())
}

/// Runs and successes per problem of a batch, from its leaderboard (every agent together).
async fn per_problem(
    api: &Api,
    batch: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, (i64, i64)>> {
    let m = api
        .get(&format!(
            "/api/v1/stats/matrix?batch_id={batch}&rows=agent&cols=problem_id"
        ))
        .await?;
    let mut out = std::collections::BTreeMap::new();
    for c in m["cells"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let e = out
            .entry(c["col"].as_str().unwrap_or("-").to_owned())
            .or_insert((0, 0));
        e.0 += c["runs"].as_i64().unwrap_or(0);
        e.1 += c["successes"].as_i64().unwrap_or(0);
    }
    Ok(out)
}

/// A rate with its interval and runs: `0.75 [0.30, 0.95] n=4`, or `-` without runs.
fn rate_cell(runs: i64, successes: i64) -> String {
    match task_executor_shared::interval::wilson(successes, runs) {
        Some(i) => format!(
            "{:.2} [{:.2}, {:.2}] n={runs}",
            successes as f64 / runs as f64,
            i.low,
            i.high
        ),
        None => "-".to_owned(),
    }
}

async fn compare(api: &Api, a: &str, b: &str) -> anyhow::Result<()> {
    let (pa, pb) = (per_problem(api, a).await?, per_problem(api, b).await?);
    let problems: std::collections::BTreeSet<&String> = pa.keys().chain(pb.keys()).collect();
    let mut rows = Vec::new();
    let (mut all_a, mut all_b) = ((0, 0), (0, 0));
    for p in problems {
        let (ra, sa) = pa.get(p).copied().unwrap_or((0, 0));
        let (rb, sb) = pb.get(p).copied().unwrap_or((0, 0));
        all_a = (all_a.0 + ra, all_a.1 + sa);
        all_b = (all_b.0 + rb, all_b.1 + sb);
        rows.push(compare_row(p, (ra, sa), (rb, sb)));
    }
    rows.push(compare_row("(all problems)", all_a, all_b));
    let mut out = std::io::stdout().lock();
    print_table(&mut out, &["PROBLEM", "A", "B", "B - A"], &rows)?;
    Ok(())
}

fn compare_row(problem: &str, (ra, sa): (i64, i64), (rb, sb): (i64, i64)) -> Vec<String> {
    let diff = if ra > 0 && rb > 0 {
        format!("{:+.2}", sb as f64 / rb as f64 - sa as f64 / ra as f64)
    } else {
        "-".to_owned()
    };
    vec![
        problem.to_owned(),
        rate_cell(ra, sa),
        rate_cell(rb, sb),
        diff,
    ]
}
