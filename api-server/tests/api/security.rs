//! Security: tokens and roles against every class of route, worker-id patterns, the token CLI and hashed
//! storage, the loopback default, cross-site requests, the rate limit and the caps on tasks.

use std::{collections::HashMap, time::Duration};

use api_server::{
    Application, Config, auth,
    store::{self, tokens},
};
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{Value, json};
use task_executor_shared::Role;

use crate::helpers::{Backend, Reply, TestApp, assert_error};

/// Tokens to create before the server starts: name, role, worker pattern.
pub(crate) type Grant<'a> = (&'a str, Role, Option<&'a str>);

/// A server on a fresh database that holds these tokens (so authentication is on); returns the tokens by name.
pub(crate) async fn spawn_with_tokens(
    backend: Backend,
    grants: &[Grant<'_>],
    tweak: impl FnOnce(&mut Config),
) -> (TestApp, HashMap<String, String>) {
    let (db_url, dir) = TestApp::fresh_database(backend).await;
    let db = store::connect(&db_url, 1).await.unwrap();
    let mut made = HashMap::new();
    for (name, role, pattern) in grants {
        let token = auth::generate_token().unwrap();
        tokens::create(
            &db,
            tokens::NewToken {
                name: name.to_string(),
                role: *role,
                worker_pattern: pattern.map(str::to_owned).or_else(|| {
                    (*role == Role::Worker).then(|| auth::default_worker_pattern(name))
                }),
                token_hash: auth::hash_token(&token),
            },
        )
        .await
        .unwrap();
        made.insert(name.to_string(), token);
    }
    db.close().await.unwrap();
    (TestApp::spawn_on(db_url, dir, tweak).await, made)
}

impl TestApp {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        // `/metrics` answers text: kept as a JSON string.
        let resp = req.send().await.expect("request failed");
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// A request, the token names allowed to make it, and the statuses it answers when allowed.
type Route<'a> = (Method, String, Option<Value>, Vec<&'a str>, Vec<StatusCode>);

/// Who may call what: one request per class of route, each with the statuses it answers when allowed.
async fn each_role_against_each_route_class(backend: Backend) {
    let (app, t) = spawn_with_tokens(
        backend,
        &[
            ("reader", Role::Read, None),
            ("submitter", Role::Submit, None),
            ("w-1", Role::Worker, None),
            ("root", Role::Admin, None),
        ],
        |_| {},
    )
    .await;
    let admin = t["root"].as_str();
    let task = app
        .call(
            Method::POST,
            "/api/v1/tasks",
            Some(admin),
            Some(json!({"problem_id": "p-1"})),
        )
        .await;
    assert_eq!(task.status, StatusCode::CREATED, "{}", task.body);
    let task_id = task.body["id"].as_str().unwrap().to_owned();
    assert_eq!(task.body["created_by"], "root");

    let ok = |codes: &[u16]| {
        codes
            .iter()
            .map(|c| StatusCode::from_u16(*c).unwrap())
            .collect::<Vec<_>>()
    };
    // (method, path, body, roles allowed, statuses when allowed)
    let routes: Vec<Route> = vec![
        (
            Method::GET,
            "/api/v1/tasks".into(),
            None,
            vec!["reader", "submitter", "root"],
            ok(&[200]),
        ),
        (
            Method::GET,
            format!("/api/v1/tasks/{task_id}"),
            None,
            vec!["reader", "submitter", "root"],
            ok(&[200]),
        ),
        (
            Method::GET,
            format!("/api/v1/tasks/{task_id}/logs"),
            None,
            vec!["reader", "submitter", "root"],
            ok(&[200]),
        ),
        (
            Method::GET,
            "/api/v1/workers".into(),
            None,
            vec!["reader", "submitter", "root"],
            ok(&[200]),
        ),
        (
            Method::GET,
            "/api/v1/workers/internal/status".into(),
            None,
            vec!["reader", "submitter", "root"],
            ok(&[200]),
        ),
        (
            Method::GET,
            "/metrics".into(),
            None,
            vec!["reader", "submitter", "root"],
            ok(&[200]),
        ),
        (
            Method::POST,
            "/api/v1/tasks".into(),
            Some(json!({"problem_id": "p-2"})),
            vec!["submitter", "root"],
            ok(&[201]),
        ),
        (
            Method::POST,
            format!("/api/v1/tasks/{task_id}/cancel"),
            None,
            vec!["submitter", "root"],
            ok(&[200, 409]),
        ),
        (
            Method::POST,
            "/api/v1/workers/register".into(),
            Some(json!({"worker_id": "w-1-a", "backend_type": "kind"})),
            vec!["w-1", "root"],
            ok(&[200, 201]),
        ),
        (
            Method::POST,
            "/api/v1/workers/w-1-a/heartbeat".into(),
            Some(json!({"status": "idle"})),
            vec!["w-1", "root"],
            ok(&[200]),
        ),
        (
            Method::POST,
            "/api/v1/workers/w-1-a/claim".into(),
            None,
            vec!["w-1", "root"],
            ok(&[200, 204, 409]),
        ),
        (
            Method::POST,
            "/api/v1/workers/internal/scale".into(),
            Some(json!({"num_workers": 0})),
            vec!["root"],
            ok(&[200]),
        ),
        (
            Method::POST,
            "/api/v1/workers/internal/stop".into(),
            None,
            vec!["root"],
            ok(&[200]),
        ),
        (
            Method::GET,
            "/api/v1/auth/whoami".into(),
            None,
            vec!["reader", "submitter", "w-1", "root"],
            ok(&[200]),
        ),
    ];
    for (method, path, body, allowed, statuses) in &routes {
        for who in ["reader", "submitter", "w-1", "root"] {
            let r = app
                .call(method.clone(), path, Some(&t[who]), body.clone())
                .await;
            if allowed.contains(&who) {
                assert!(
                    statuses.contains(&r.status),
                    "{who} on {method} {path}: {} {}",
                    r.status,
                    r.body
                );
            } else {
                assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
            }
        }
        let anonymous = app.call(method.clone(), path, None, body.clone()).await;
        assert_error(&anonymous, StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(
            anonymous.headers["www-authenticate"], "Bearer",
            "{method} {path}"
        );
        let unknown = app
            .call(method.clone(), path, Some("tex_0000"), body.clone())
            .await;
        assert_error(&unknown, StatusCode::UNAUTHORIZED, "unauthorized");
        let basic = app
            .send(
                app.client
                    .request(method.clone(), app.url(path))
                    .header("authorization", "Basic cm9vdDpyb290"),
            )
            .await;
        assert_error(&basic, StatusCode::UNAUTHORIZED, "unauthorized");
    }

    // Open to all: readiness, the document and the docs; health says only its status without a token.
    for path in ["/ready", "/openapi.json", "/docs"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let h = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(h.status, StatusCode::OK);
    let keys: Vec<&String> = h.body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["status", "timestamp", "version"], "{}", h.body);
    let w = app
        .call(Method::GET, "/health", Some(&t["w-1"]), None)
        .await;
    assert!(
        w.body.get("queue").is_none(),
        "a worker token does not read: {}",
        w.body
    );
    let r = app
        .call(Method::GET, "/health", Some(&t["reader"]), None)
        .await;
    assert!(
        r.body["queue"]["pending"].is_number() && r.body["database"]["connected"] == true,
        "{}",
        r.body
    );

    let me = app
        .call(Method::GET, "/api/v1/auth/whoami", Some(&t["w-1"]), None)
        .await;
    assert_eq!(
        me.body,
        json!({"auth_enabled": true, "name": "w-1", "role": "worker", "worker_pattern": "w-1-*"})
    );
}

/// A worker token acts only as the workers its pattern covers: it cannot register, heartbeat, claim or report
/// as another host's worker. An admin token may act as any.
async fn worker_tokens_act_only_within_their_pattern(backend: Backend) {
    let (app, t) = spawn_with_tokens(
        backend,
        &[
            ("gpu-1", Role::Worker, None),
            ("gpu-2", Role::Worker, Some("gpu-2-*")),
            ("root", Role::Admin, None),
        ],
        |_| {},
    )
    .await;
    let (g1, g2, root) = (t["gpu-1"].as_str(), t["gpu-2"].as_str(), t["root"].as_str());
    let reg = |id: &str| json!({"worker_id": id, "backend_type": "kind"});
    let r = app
        .call(
            Method::POST,
            "/api/v1/workers/register",
            Some(g1),
            Some(reg("gpu-1-kind")),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = app
        .call(
            Method::POST,
            "/api/v1/workers/register",
            Some(g2),
            Some(reg("gpu-2-kind")),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for id in ["gpu-2-kind", "gpu-10-kind", "gpu-1"] {
        let r = app
            .call(
                Method::POST,
                "/api/v1/workers/register",
                Some(g1),
                Some(reg(id)),
            )
            .await;
        assert_error(&r, StatusCode::FORBIDDEN, "worker_not_allowed");
    }
    // gpu-2's run cannot be touched with gpu-1's token, even knowing its attempt and lease.
    let task = app
        .call(
            Method::POST,
            "/api/v1/tasks",
            Some(root),
            Some(json!({"problem_id": "p"})),
        )
        .await
        .body;
    let claimed = app
        .call(
            Method::POST,
            "/api/v1/workers/gpu-2-kind/claim",
            Some(g2),
            None,
        )
        .await;
    assert_eq!(claimed.status, StatusCode::OK, "{}", claimed.body);
    let id = task["id"].as_str().unwrap();
    let report =
        json!({"attempt": 1, "lease_id": claimed.body["lease_id"], "result": {"success": true}});
    for path in [
        format!("/api/v1/workers/gpu-2-kind/tasks/{id}/complete"),
        format!("/api/v1/workers/gpu-2-kind/tasks/{id}/fail"),
        format!("/api/v1/workers/gpu-2-kind/tasks/{id}/release"),
        format!("/api/v1/workers/gpu-2-kind/tasks/{id}/logs"),
        "/api/v1/workers/gpu-2-kind/heartbeat".to_owned(),
        "/api/v1/workers/gpu-2-kind/claim".to_owned(),
    ] {
        let body = if path.ends_with("/logs") {
            json!({"attempt": 1, "lease_id": claimed.body["lease_id"], "entries": []})
        } else if path.ends_with("/fail") {
            json!({"attempt": 1, "lease_id": claimed.body["lease_id"], "error": "x"})
        } else if path.ends_with("/heartbeat") {
            json!({"status": "idle"})
        } else {
            report.clone()
        };
        let r = app.call(Method::POST, &path, Some(g1), Some(body)).await;
        assert_error(&r, StatusCode::FORBIDDEN, "worker_not_allowed");
    }
    let still = app
        .call(
            Method::GET,
            &format!("/api/v1/tasks/{id}"),
            Some(root),
            None,
        )
        .await;
    assert_eq!(still.body["status"], "running", "{}", still.body);
    // Its own token completes it; an admin could have too.
    let done = app
        .call(
            Method::POST,
            &format!("/api/v1/workers/gpu-2-kind/tasks/{id}/complete"),
            Some(g2),
            Some(report),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let r = app
        .call(
            Method::POST,
            "/api/v1/workers/register",
            Some(root),
            Some(reg("anything-1")),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

fn token_cli(db_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_api-server"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .env_remove("TOKENS_FILE")
        .output()
        .expect("run api-server token")
}

/// `api-server token create|list|revoke` against the database of a running server: the token is printed once
/// and stored only as its SHA-256; the server accepts it, and refuses it soon after it is revoked.
async fn tokens_are_created_listed_and_revoked_through_the_cli(backend: Backend) {
    let (app, t) = spawn_with_tokens(backend, &[("root", Role::Admin, None)], |_| {}).await;
    let out = token_cli(
        &app.db_url,
        &["token", "create", "--name", "ci-bot", "--role", "submit"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("tex_") && token.len() == 68, "{token}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown this once"));

    // Stored hashed: the row holds the SHA-256, and no column anywhere holds the token.
    let db = Database::connect(&app.db_url).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT name, role, token_hash FROM api_tokens WHERE name = 'ci-bot'",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let hash: String = rows[0].try_get("", "token_hash").unwrap();
    let role: String = rows[0].try_get("", "role").unwrap();
    assert_eq!(hash, auth::hash_token(&token));
    assert_eq!(role, "submit");
    let all = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT name || ' ' || role || ' ' || token_hash || ' ' || COALESCE(worker_pattern, '') AS row FROM api_tokens",
        ))
        .await
        .unwrap();
    for r in all {
        let text: String = r.try_get("", "row").unwrap();
        assert!(
            !text.contains(&token[4..]),
            "a token is stored in clear: {text}"
        );
    }

    // The running server picks it up without a restart.
    let created = app
        .eventually("the new token accepted", || async {
            let r = app
                .call(
                    Method::POST,
                    "/api/v1/tasks",
                    Some(&token),
                    Some(json!({"problem_id": "p"})),
                )
                .await;
            (r.status == StatusCode::CREATED).then_some(r.body)
        })
        .await;
    assert_eq!(created["created_by"], "ci-bot");

    let dup = token_cli(
        &app.db_url,
        &["token", "create", "--name", "ci-bot", "--role", "read"],
    );
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("exists"),
        "{}",
        String::from_utf8_lossy(&dup.stderr)
    );
    let w = token_cli(
        &app.db_url,
        &["token", "create", "--name", "gpu-7", "--role", "worker"],
    );
    assert!(w.status.success());
    let overlapping = token_cli(
        &app.db_url,
        &["token", "create", "--name", "gpu", "--role", "worker"],
    );
    assert!(overlapping.status.success());
    assert!(
        String::from_utf8_lossy(&overlapping.stderr).contains("may cover the same worker ids"),
        "gpu-* covers gpu-7's workers: {}",
        String::from_utf8_lossy(&overlapping.stderr)
    );
    assert!(
        token_cli(&app.db_url, &["token", "revoke", "gpu"])
            .status
            .success()
    );
    let bad = token_cli(
        &app.db_url,
        &[
            "token",
            "create",
            "--name",
            "r",
            "--role",
            "read",
            "--worker-pattern",
            "x-*",
        ],
    );
    assert!(!bad.status.success(), "a pattern is only for worker tokens");

    let list = token_cli(&app.db_url, &["token", "list"]);
    assert!(list.status.success());
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(
        listed.contains("ci-bot") && listed.contains("submit"),
        "{listed}"
    );
    assert!(
        listed.contains("gpu-7-*"),
        "the default worker pattern: {listed}"
    );
    assert!(
        !listed.contains("tex_"),
        "list never shows a token: {listed}"
    );

    let revoke = token_cli(&app.db_url, &["token", "revoke", "ci-bot"]);
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    app.eventually("the revoked token refused", || async {
        let r = app
            .call(Method::GET, "/api/v1/tasks", Some(&token), None)
            .await;
        (r.status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let again = token_cli(&app.db_url, &["token", "revoke", "ci-bot"]);
    assert!(!again.status.success());
    // Revoking every token does not open the server.
    assert!(
        token_cli(&app.db_url, &["token", "revoke", "root"])
            .status
            .success()
    );
    assert!(
        token_cli(&app.db_url, &["token", "revoke", "gpu-7"])
            .status
            .success()
    );
    app.eventually("the last token refused", || async {
        let r = app
            .call(Method::GET, "/api/v1/tasks", Some(&t["root"]), None)
            .await;
        (r.status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let anonymous = app.call(Method::GET, "/api/v1/tasks", None, None).await;
    assert_error(&anonymous, StatusCode::UNAUTHORIZED, "unauthorized");
}

/// Tokens from a file (systemd `LoadCredential=`): in clear or as `sha256:`, reloaded when the file changes.
async fn tokens_from_a_file(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let (admin, reader) = (
        auth::generate_token().unwrap(),
        auth::generate_token().unwrap(),
    );
    std::fs::write(
        &file,
        format!(
            "# provisioned\nops admin {admin}\nviewer read sha256:{}\n",
            auth::hash_token(&reader)
        ),
    )
    .unwrap();
    let path = file.clone();
    let app = TestApp::spawn_with(backend, move |c| c.tokens_file = Some(path)).await;
    assert_eq!(
        app.call(Method::GET, "/api/v1/tasks", Some(&reader), None)
            .await
            .status,
        StatusCode::OK
    );
    let r = app
        .call(
            Method::POST,
            "/api/v1/tasks",
            Some(&reader),
            Some(json!({"problem_id": "p"})),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        app.call(
            Method::POST,
            "/api/v1/tasks",
            Some(&admin),
            Some(json!({"problem_id": "p"}))
        )
        .await
        .status,
        StatusCode::CREATED
    );
    std::fs::write(&file, format!("ops admin {admin}\n")).unwrap();
    app.eventually("a token removed from the file refused", || async {
        let r = app
            .call(Method::GET, "/api/v1/tasks", Some(&reader), None)
            .await;
        (r.status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
}

/// Without tokens the server listens on loopback (by default, and only there); a public address needs tokens
/// or the explicit `--insecure-no-auth`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_server_stays_on_loopback() {
    let (db_url, _dir) = TestApp::fresh_database(Backend::Sqlite).await;
    let config = |bind: Option<&str>, insecure: bool| {
        let mut c = Config::for_database(&db_url);
        c.bind_addr = bind.map(str::to_owned);
        c.insecure_no_auth = insecure;
        c.auto_start_workers = false;
        c
    };
    let app = Application::build(config(None, false))
        .await
        .expect("the default starts");
    assert_eq!(app.local_addr().to_string(), "127.0.0.1:8000");
    drop(app);
    for public in ["0.0.0.0:0", "[::]:0"] {
        let err = Application::build(config(Some(public), false))
            .await
            .err()
            .unwrap_or_else(|| panic!("{public} without tokens must be refused"));
        let msg = format!("{err:#}");
        assert!(
            msg.contains("refusing to listen") && msg.contains("--insecure-no-auth"),
            "{msg}"
        );
    }
    let app = Application::build(config(Some("0.0.0.0:0"), true))
        .await
        .expect("--insecure-no-auth");
    assert!(app.local_addr().ip().is_unspecified());
    drop(app);
    let db = store::connect(&db_url, 1).await.unwrap();
    tokens::create(
        &db,
        tokens::NewToken {
            name: "root".into(),
            role: Role::Admin,
            worker_pattern: None,
            token_hash: auth::hash_token("tex_x"),
        },
    )
    .await
    .unwrap();
    db.close().await.unwrap();
    let app = Application::build(config(Some("0.0.0.0:0"), false))
        .await
        .expect("with a token");
    assert!(app.local_addr().ip().is_unspecified());
}

/// A page on another site cannot make the user's browser change anything here, even with authentication off
/// (the default on loopback): forms and `no-cors` fetches carry `Origin` / `Sec-Fetch-Site`.
async fn cross_site_requests_are_refused(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.auto_start_workers = true;
        c.num_internal_workers = 1;
    })
    .await;
    let task = app
        .create_task(json!({"problem_id": "p", "parameters": {"duration": 30}}))
        .await;
    let id = task["id"].as_str().unwrap();
    let form = |path: &str| {
        app.client
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("")
    };
    for req in [
        form("/api/v1/workers/internal/stop").header("origin", "http://evil.example"),
        form("/api/v1/workers/internal/stop").header("origin", "null"),
        form(&format!("/api/v1/tasks/{id}/cancel")).header("origin", "https://evil.example"),
        app.client
            .post(app.url(&format!("/api/v1/tasks/{id}/cancel")))
            .header("sec-fetch-site", "cross-site"),
        app.client
            .post(app.url("/api/v1/tasks"))
            .header("sec-fetch-site", "same-site")
            .json(&json!({"problem_id": "p"})),
    ] {
        let r = app.send(req).await;
        assert_error(&r, StatusCode::FORBIDDEN, "cross_site_request");
    }
    let status = app.get("/api/v1/workers/internal/status").await;
    assert_eq!(
        status.body["running"], true,
        "the workers were not stopped: {}",
        status.body
    );
    let t = app.task(&task["id"]).await;
    assert_ne!(t["status"], "cancelled", "{t}");
    let all = app.get("/api/v1/tasks").await;
    assert_eq!(all.body.as_array().unwrap().len(), 1);

    // The same page's own requests (Swagger UI) and clients that are not browsers pass.
    let own_origin = app.base.clone();
    let r = app
        .send(
            app.client
                .post(app.url(&format!("/api/v1/tasks/{id}/cancel")))
                .header("origin", own_origin)
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = app
        .send(
            app.client
                .post(app.url("/api/v1/workers/internal/start"))
                .header("origin", "https://executor.example.org")
                .header("x-forwarded-host", "executor.example.org"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "behind a proxy: {}", r.body);
    let r = app
        .send(app.client.post(app.url("/api/v1/workers/internal/stop")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 is same-origin to the
    // browser; without tokens the server answers only requests addressed to a loopback name.
    for host in ["evil.example:8000", "evil.example", "10.0.0.1:8000"] {
        let r = app
            .send(
                app.client
                    .get(app.url("/api/v1/tasks"))
                    .header("host", host)
                    .header("sec-fetch-site", "same-origin"),
            )
            .await;
        assert_error(&r, StatusCode::FORBIDDEN, "host_not_allowed");
    }
    for host in ["localhost:1234", "127.0.0.2", "[::1]:80"] {
        let r = app
            .send(
                app.client
                    .get(app.url("/api/v1/tasks"))
                    .header("host", host),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{host}: {}", r.body);
    }
}

/// Browsers cannot set headers on `EventSource` or `WebSocket`: the live streams (and only they) take the
/// token as `access_token`; a WebSocket handshake from another site is refused like a cross-site POST.
async fn streams_take_a_token_from_the_query_and_refuse_other_sites(backend: Backend) {
    let (app, t) = spawn_with_tokens(
        backend,
        &[("viewer", Role::Read, None), ("root", Role::Admin, None)],
        |_| {},
    )
    .await;
    let task = app
        .call(
            Method::POST,
            "/api/v1/tasks",
            Some(&t["root"]),
            Some(json!({"problem_id": "p"})),
        )
        .await
        .body;
    let id = task["id"].as_str().unwrap();
    let viewer = &t["viewer"];
    let sse = app
        .client
        .get(app.url(&format!("/api/v1/tasks/{id}/events?access_token={viewer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    drop(sse);
    let elsewhere = app
        .get(&format!("/api/v1/tasks/{id}?access_token={viewer}"))
        .await;
    assert_error(&elsewhere, StatusCode::UNAUTHORIZED, "unauthorized");
    let ws = app.base.replace("http://", "ws://");
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("{ws}/ws/tasks/{id}?access_token={viewer}"))
            .await
            .expect("a WebSocket with the token in the query");
    let first = futures_util::StreamExt::next(&mut socket)
        .await
        .unwrap()
        .unwrap();
    assert!(
        first.to_text().unwrap().contains("\"type\":\"status\""),
        "{first}"
    );
    let refused = tokio_tungstenite::connect_async(format!("{ws}/ws/tasks/{id}")).await;
    assert!(refused.is_err(), "no token, no WebSocket");
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("{ws}/ws/tasks/{id}?access_token={viewer}"),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN)
        }
        other => panic!(
            "a cross-site WebSocket handshake must be refused: {:?}",
            other.map(|_| ())
        ),
    }
}

/// The request rate limit: per token (each its own bucket), per address without one; 429 with `Retry-After`;
/// probes are not limited.
async fn the_rate_limit_answers_429_with_retry_after(backend: Backend) {
    let (app, t) = spawn_with_tokens(
        backend,
        &[("a", Role::Read, None), ("b", Role::Read, None)],
        |c| {
            c.rate_limit_per_second = 1;
            c.rate_limit_burst = 3;
        },
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            app.call(Method::GET, "/api/v1/tasks", Some(&t["a"]), None)
                .await,
        );
    }
    let limited = statuses
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("a burst of 6 over a limit of 3 is refused");
    assert_error(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let wait: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert!(
        statuses.iter().take(3).all(|r| r.status == StatusCode::OK),
        "the burst passes"
    );
    // Another token has its own bucket; requests without a token share their address's.
    assert_eq!(
        app.call(Method::GET, "/api/v1/tasks", Some(&t["b"]), None)
            .await
            .status,
        StatusCode::OK
    );
    for _ in 0..10 {
        assert_eq!(app.get("/health").await.status, StatusCode::OK);
        assert_eq!(app.get("/ready").await.status, StatusCode::OK);
    }
    let mut anonymous = Vec::new();
    for _ in 0..6 {
        anonymous.push(
            app.call(Method::GET, "/api/v1/tasks", None, None)
                .await
                .status,
        );
    }
    assert!(
        anonymous.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{anonymous:?}"
    );
    // The bucket refills.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(
        app.call(Method::GET, "/api/v1/tasks", Some(&t["a"]), None)
            .await
            .status,
        StatusCode::OK
    );
}

/// `MAX_ACTIVE_TASKS_PER_TOKEN`: 429 `too_many_tasks` past the cap, per token; finished tasks free room; a
/// repeated idempotent create still answers its task.
async fn active_tasks_per_token_are_capped(backend: Backend) {
    let (app, t) = spawn_with_tokens(
        backend,
        &[("s1", Role::Submit, None), ("s2", Role::Submit, None)],
        |c| c.max_active_tasks_per_token = 2,
    )
    .await;
    let create = |tok: &str, key: Option<&str>| {
        let mut req = app
            .client
            .post(app.url("/api/v1/tasks"))
            .bearer_auth(tok)
            .json(&json!({"problem_id": "p"}));
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        app.send(req)
    };
    let first = create(&t["s1"], Some("k1")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(create(&t["s1"], None).await.status, StatusCode::CREATED);
    let over = create(&t["s1"], None).await;
    assert_error(&over, StatusCode::TOO_MANY_REQUESTS, "too_many_tasks");
    assert!(over.headers.contains_key("retry-after"));
    let replay = create(&t["s1"], Some("k1")).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    assert_eq!(replay.body["id"], first.body["id"]);
    assert_eq!(
        create(&t["s2"], None).await.status,
        StatusCode::CREATED,
        "another token's cap is its own"
    );
    let id = first.body["id"].as_str().unwrap();
    let cancel = app
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{id}/cancel"),
            Some(&t["s1"]),
            None,
        )
        .await;
    assert_eq!(cancel.status, StatusCode::OK);
    assert_eq!(
        create(&t["s1"], None).await.status,
        StatusCode::CREATED,
        "a finished task frees room"
    );
}

/// An Idempotency-Key is its token's own: another token with the same key makes its own task (or batch) and
/// never sees, nor collides with, the first one's.
async fn idempotency_keys_are_each_tokens_own(backend: Backend) {
    let (app, t) = spawn_with_tokens(
        backend,
        &[("s1", Role::Submit, None), ("s2", Role::Submit, None)],
        |_| {},
    )
    .await;
    let post = |tok: &str, path: &str, body: Value| {
        app.send(
            app.client
                .post(app.url(path))
                .bearer_auth(tok)
                .header("idempotency-key", "run-1")
                .json(&body),
        )
    };
    for (path, body) in [
        ("/api/v1/tasks", json!({"problem_id": "p"})),
        ("/api/v1/batches", json!({"tasks": [{"problem_id": "p"}]})),
    ] {
        let a = post(&t["s1"], path, body.clone()).await;
        let b = post(&t["s2"], path, body.clone()).await;
        assert_eq!(
            (a.status, b.status),
            (StatusCode::CREATED, StatusCode::CREATED),
            "{path}"
        );
        assert_ne!(a.body["id"], b.body["id"], "{path}: each token its own");
        let again = post(&t["s2"], path, body.clone()).await;
        assert_eq!(
            (again.status, &again.body["id"]),
            (StatusCode::OK, &b.body["id"]),
            "{path}"
        );
        let other = post(
            &t["s2"],
            path,
            json!({"problem_id": "q", "tasks": [{"problem_id": "q"}]}),
        )
        .await;
        assert!(
            !other
                .body
                .to_string()
                .contains(a.body["id"].as_str().unwrap()),
            "{path}: never reveals the other token's: {}",
            other.body
        );
    }
}

/// `MAX_PENDING_TASKS`: 503 `queue_full` with `Retry-After` once that many tasks wait; a claim frees room.
async fn a_full_queue_answers_503(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.max_pending_tasks = 2).await;
    app.create_task(json!({"problem_id": "p"})).await;
    app.create_task(json!({"problem_id": "p"})).await;
    let full = app.post("/api/v1/tasks", json!({"problem_id": "p"})).await;
    assert_error(&full, StatusCode::SERVICE_UNAVAILABLE, "queue_full");
    assert_eq!(full.headers["retry-after"], "30");
    assert_eq!(app.count("/api/v1/tasks").await, 2);
    app.register("w-1", json!({"max_parallel_tasks": 1})).await;
    app.claim_one("w-1").await;
    app.create_task(json!({"problem_id": "p"})).await;
}

/// A server reuses its count of pending tasks for a second at most while far below `MAX_PENDING_TASKS`: tasks
/// another replica queued meanwhile are counted by the first creation after that second, which is refused
/// once the queue is full.
async fn the_queue_cap_sees_other_replicas_within_a_second(backend: Backend) {
    let (db_url, dir) = TestApp::fresh_database(backend).await;
    let cap = |c: &mut api_server::Config| c.max_pending_tasks = 1_000;
    let a = TestApp::spawn_on(db_url.clone(), dir, cap).await;
    let b = TestApp::spawn_on(db_url, None, cap).await;
    a.create_task(json!({"problem_id": "p"})).await;
    let tasks: Vec<Value> = (0..999).map(|_| json!({"problem_id": "p"})).collect();
    let batch = b.post("/api/v1/batches", json!({"tasks": tasks})).await;
    assert_eq!(batch.status, StatusCode::CREATED, "{}", batch.body);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let full = a.post("/api/v1/tasks", json!({"problem_id": "p"})).await;
    assert_error(&full, StatusCode::SERVICE_UNAVAILABLE, "queue_full");
    assert!(
        full.body["detail"]
            .as_str()
            .unwrap()
            .contains("1000 tasks are pending"),
        "{}",
        full.body
    );
}

/// The OpenAPI document declares the bearer scheme on every operation that needs a token, and their 401 and
/// 403 answers, so that Swagger UI's "Authorize" works and generated clients know the errors.
async fn the_document_declares_the_bearer_scheme(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let spec = app.get("/openapi.json").await.body;
    assert_eq!(
        spec["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    let mut n = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let security = op["security"].as_array();
            if path == "/ready" {
                assert!(security.is_none(), "{method} {path}");
                continue;
            }
            let security =
                security.unwrap_or_else(|| panic!("{method} {path} declares no security"));
            assert!(
                security.iter().any(|s| s.get("bearerAuth").is_some()),
                "{method} {path}"
            );
            if path != "/health" {
                assert_eq!(security.len(), 1, "{method} {path} needs a token");
                for code in ["401", "403", "429"] {
                    assert!(
                        op["responses"][code].is_object(),
                        "{method} {path} documents {code}"
                    );
                }
                n += 1;
            }
        }
    }
    assert!(n >= 20, "{n} operations need a token");
}

task_executor_shared::both_backends!(
    each_role_against_each_route_class,
    worker_tokens_act_only_within_their_pattern,
    tokens_are_created_listed_and_revoked_through_the_cli,
    tokens_from_a_file,
    cross_site_requests_are_refused,
    the_rate_limit_answers_429_with_retry_after,
    active_tasks_per_token_are_capped,
    a_full_queue_answers_503,
    the_queue_cap_sees_other_replicas_within_a_second,
    the_document_declares_the_bearer_scheme,
    streams_take_a_token_from_the_query_and_refuse_other_sites,
    idempotency_keys_are_each_tokens_own,
);
