//! The web dashboard: its pages and forms over HTTP (sessions, roles, cross-site forms, errors), and the
//! whole of it in a real browser — Debian's headless Chromium driven through chromedriver (WebDriver) — against
//! a server running simulated tasks: every page loads without a console error and shows the right data, a
//! task's status and log update live without a reload, Cancel cancels, the internal-worker controls work, a
//! batch page draws its charts and its export link downloads a CSV that parses. The browser run takes a
//! screenshot of each page (into `target/tmp/ui-screenshots/`, or into `api-server/docs/screenshots/` with
//! `UPDATE_SCREENSHOTS=1`, which is how the README's pictures are made).

use std::{collections::HashMap, path::PathBuf, process::Stdio, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator, wd::WebDriverCompatibleCommand};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use task_executor_shared::Role;

use crate::{
    helpers::{Backend, TestApp, wait_for},
    security::spawn_with_tokens,
};

// ---------------------------------------------------------------------------------------------------------
// Over HTTP

/// A client that keeps cookies and does not follow redirects (to see them).
fn browserlike() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The hidden `csrf` value of the first form in a page.
/// Posts a dashboard form that carries only its form token, as the page's button does.
async fn submit(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    csrf: &str,
) -> reqwest::Response {
    client
        .post(url)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap()
}

/// Asserts a 303 to `to`.
fn assert_redirect(r: &reqwest::Response, to: &str) {
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], to);
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form token") + 19;
    html[at..at + 32].to_owned()
}

async fn page(client: &reqwest::Client, url: &str) -> (StatusCode, header::HeaderMap, String) {
    let r = client.get(url).send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.text().await.unwrap())
}

async fn pages_and_sessions(backend: Backend) {
    let (app, tokens) = spawn_with_tokens(
        backend,
        &[
            ("boss", Role::Admin, None),
            ("viewer", Role::Read, None),
            ("gpu-1", Role::Worker, None),
        ],
        |_| {},
    )
    .await;
    let task = app
        .send(
            app.client
                .post(app.url("/api/v1/tasks"))
                .bearer_auth(&tokens["boss"])
                .json(&json!({"problem_id": "misconfig_app_hotel_res-detection-1"})),
        )
        .await;
    assert_eq!(task.status, StatusCode::CREATED);
    let task_id = task.body["id"].as_str().unwrap().to_owned();

    // `/` leads to the dashboard, which leads a browser without a session to the login form.
    let web = browserlike();
    let r = web.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/ui");
    let r = web
        .get(app.url("/ui/tasks?status=pending"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()[header::LOCATION],
        "/ui/login?next=/ui/tasks%3Fstatus%3Dpending"
    );
    let (status, headers, login) = page(&web, &app.url("/ui/login?next=/ui/tasks")).await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let csrf = csrf_of(&login);

    // A wrong token, a worker token, and a form without its token are refused; nothing is set.
    for (token, form_token, status, says) in [
        (
            "tex_nope",
            csrf.as_str(),
            StatusCode::UNAUTHORIZED,
            "not valid",
        ),
        (
            tokens["gpu-1"].as_str(),
            csrf.as_str(),
            StatusCode::UNAUTHORIZED,
            "cannot read",
        ),
        (
            tokens["boss"].as_str(),
            "",
            StatusCode::FORBIDDEN,
            "did not come from this dashboard",
        ),
    ] {
        let r = web
            .post(app.url("/ui/login"))
            .form(&[
                ("token", token),
                ("csrf", form_token),
                ("next", "/ui/tasks"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        assert!(
            r.headers()
                .get(header::SET_COOKIE)
                .is_none_or(|c| !c.to_str().unwrap().contains("tex_session=tex"))
        );
        let body = r.text().await.unwrap();
        assert!(body.contains(says), "{body}");
    }

    // The reader logs in: an HttpOnly, SameSite=Lax cookie, and back where it was going.
    let r = web
        .post(app.url("/ui/login"))
        .form(&[
            ("token", tokens["viewer"].as_str()),
            ("csrf", csrf.as_str()),
            ("next", "https://evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()[header::LOCATION],
        "/ui",
        "an outside `next` is not followed"
    );
    let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("tex_session=tex_"), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }

    // Every page answers; the task's page shows the task; a reader sees no Cancel and no controls.
    for path in [
        "/ui",
        "/ui/tasks",
        "/ui/workers",
        "/ui/batches",
        &format!("/ui/tasks/{task_id}"),
    ] {
        let (status, _, html) = page(&web, &app.url(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {html}");
        assert!(
            html.contains("viewer · read"),
            "{path} names who is logged in"
        );
    }
    let (_, _, html) = page(&web, &app.url(&format!("/ui/tasks/{task_id}"))).await;
    assert!(
        html.contains("misconfig_app_hotel_res-detection-1")
            && html.contains("data-status=\"pending\"")
    );
    assert!(
        !html.contains("Cancel task"),
        "a reader is not offered Cancel"
    );
    let (_, _, html) = page(&web, &app.url("/ui/workers")).await;
    assert!(!html.contains("/ui/workers/internal/scale") && html.contains("needs an admin token"));
    // The live part alone, for the script.
    let (_, _, fragment) = page(&web, &app.url("/ui/tasks?fragment=1")).await;
    assert!(!fragment.contains("<html") && fragment.contains(&task_id));

    // The session cookie reads the API (the pages' streams and exports), but does not change anything there.
    let r = web
        .get(app.url(&format!("/api/v1/tasks/{task_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = web
        .post(app.url(&format!("/api/v1/tasks/{task_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The reader's Cancel through a form is a 403, and the task is still pending.
    let (_, _, html) = page(&web, &app.url("/ui/tasks")).await;
    let csrf = csrf_of(&html);
    let r = submit(
        &web,
        app.url(&format!("/ui/tasks/{task_id}/cancel")),
        csrf.as_str(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("does not allow this"));

    // An admin session: a form without its token, or posted from another site, changes nothing.
    let admin = browserlike();
    let (_, _, login) = page(&admin, &app.url("/ui/login")).await;
    let csrf = csrf_of(&login);
    let r = admin
        .post(app.url("/ui/login"))
        .form(&[("token", tokens["boss"].as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cancel = app.url(&format!("/ui/tasks/{task_id}/cancel"));
    let r = submit(&admin, &cancel, &"0".repeat(32)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = admin
        .post(&cancel)
        .header(header::ORIGIN, "https://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .send(
            app.client
                .get(app.url(&format!("/api/v1/tasks/{task_id}")))
                .bearer_auth(&tokens["boss"]),
        )
        .await;
    assert_eq!(r.body["status"], "pending");
    // With its token, from the page: cancelled, and back to the task's page with a notice.
    let r = submit(&admin, &cancel, csrf.as_str()).await;
    assert_redirect(&r, &format!("/ui/tasks/{task_id}?notice=cancelled"));
    let (_, _, html) = page(
        &admin,
        &app.url(&format!("/ui/tasks/{task_id}?notice=cancelled")),
    )
    .await;
    assert!(html.contains("The task was cancelled.") && html.contains("data-status=\"cancelled\""));
    // Cancelling again says why not, as a page.
    let r = submit(&admin, &cancel, csrf.as_str()).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("already cancelled"));

    // What tasks and workers say is shown as text, never as markup.
    let hostile = "<img src=x onerror=alert(1)>";
    let boss = tokens["boss"].as_str();
    let r = app
        .send(
            app.client
                .post(app.url("/api/v1/batches"))
                .bearer_auth(boss)
                .json(&json!({"name": hostile, "tasks": [{"problem_id": "misconfig_app_hotel_res-detection-1"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let batch_id = r.body["id"].as_str().unwrap().to_owned();
    let r = app
        .send(
            app.client
                .post(app.url("/api/v1/workers/register"))
                .bearer_auth(boss)
                .json(&json!({"worker_id": "html-1", "backend_type": "kind"})),
        )
        .await;
    assert!(r.status.is_success());
    let claimed = app
        .send(
            app.client
                .post(app.url("/api/v1/workers/html-1/claim"))
                .bearer_auth(boss),
        )
        .await;
    assert_eq!(claimed.status, StatusCode::OK);
    let claimed_id = claimed.body["id"].as_str().unwrap().to_owned();
    let r = app
        .send(
            app.client
                .post(app.url(&format!("/api/v1/workers/html-1/tasks/{claimed_id}/logs")))
                .bearer_auth(boss)
                .json(&json!({"attempt": claimed.body["attempt"], "lease_id": claimed.body["lease_id"],
                              "entries": [{"level": "error", "message": format!("</td><script>alert(2)</script>{hostile}")}]})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    for path in [
        format!("/ui/batches/{batch_id}"),
        "/ui/batches".to_owned(),
        format!("/ui/tasks/{claimed_id}"),
    ] {
        let (status, _, html) = page(&admin, &app.url(&path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            !html.contains("<img src=x") && !html.contains("<script>alert"),
            "{path}: markup got through"
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{path}: the text is shown"
        );
    }
    // Cancel batch from its page: its unfinished task (running on html-1) is cancelled.
    let r = submit(
        &admin,
        app.url(&format!("/ui/batches/{batch_id}/cancel")),
        csrf.as_str(),
    )
    .await;
    assert_redirect(
        &r,
        &format!("/ui/batches/{batch_id}?notice=batch_cancelled"),
    );
    let r = app
        .send(
            app.client
                .get(app.url(&format!("/api/v1/tasks/{claimed_id}")))
                .bearer_auth(boss),
        )
        .await;
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["batch_id"], batch_id.as_str());

    // A browser that says the form came from another site is refused too (not only by `Origin`).
    let r = admin
        .post(&cancel)
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Unknown pages and ids are pages too, not JSON.
    for path in [
        "/ui/nope",
        "/ui/tasks/not-a-uuid",
        "/ui/batches/0b7c4a47-1d6e-4a40-9c5e-9b1d2c3e4f50",
    ] {
        let r = admin.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }

    // Logging out ends the session; a revoked token ends it too.
    let (_, _, html) = page(&web, &app.url("/ui")).await;
    let r = submit(&web, app.url("/ui/logout"), &csrf_of(&html)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = web.get(app.url("/ui")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "logged out");
    let db = api_server::store::connect(&app.db_url, 1).await.unwrap();
    api_server::store::tokens::revoke(&db, "boss")
        .await
        .unwrap();
    wait_for(
        "the revoked token's session to end",
        Duration::from_secs(10),
        || async {
            let r = admin.get(app.url("/ui")).send().await.unwrap();
            (r.status() == StatusCode::SEE_OTHER).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn pages_and_sessions_sqlite() {
    pages_and_sessions(Backend::Sqlite).await;
}

#[tokio::test]
async fn pages_and_sessions_postgres() {
    pages_and_sessions(Backend::Postgres).await;
}

/// Without tokens (on loopback) the dashboard asks for none, and its forms still need their token.
#[tokio::test]
async fn open_dashboard_on_loopback() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let web = browserlike();
    let r = web.get(app.url("/ui/login")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "no login without tokens");
    let (status, _, html) = page(&web, &app.url("/ui/workers")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("No authentication (loopback)")
            && html.contains("/ui/workers/internal/scale")
    );
    let r = web
        .post(app.url("/ui/workers/internal/scale"))
        .form(&[("num_workers", "2"), ("csrf", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = web
        .post(app.url("/ui/workers/internal/scale"))
        .form(&[("num_workers", "65"), ("csrf", &csrf_of(&html))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = app.get("/api/v1/workers/internal/status").await;
    assert_eq!(r.body["num_workers"], 0, "nothing was scaled");

    // The task list pages by keyset: 55 tasks are 50 and 5, newest first, each once.
    let mut made = Vec::new();
    for i in 0..55 {
        let t = app
            .create_task(json!({"problem_id": format!("misconfig_app_hotel_res-detection-{i}")}))
            .await;
        made.push(t["id"].as_str().unwrap().to_owned());
    }
    let rows = |html: &str| -> Vec<String> {
        html.split("data-task-id=\"")
            .skip(1)
            .map(|r| r[..36].to_owned())
            .collect()
    };
    let (_, _, first) = page(&web, &app.url("/ui/tasks")).await;
    let first_rows = rows(&first);
    assert_eq!(first_rows.len(), 50);
    assert_eq!(first_rows[0], made[54], "newest first");
    let at = first.find("rel=\"next\"").expect("an older page");
    let href_at = first[..at].rfind("href=\"").unwrap() + 6;
    let href = first[href_at..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let (status, _, second) = page(&web, &app.url(&href)).await;
    assert_eq!(status, StatusCode::OK, "{href}");
    let second_rows = rows(&second);
    assert_eq!(
        second_rows,
        made[..5].iter().rev().cloned().collect::<Vec<_>>()
    );
    assert!(!second.contains("rel=\"next\"") && second.contains("rel=\"first\""));
}

// ---------------------------------------------------------------------------------------------------------
// In a real browser

/// chromedriver with a headless Chromium behind it, in a process group of its own (killed with it).
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

fn program(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

impl Browser {
    async fn start() -> Browser {
        let chromedriver = program("CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = program("CHROMIUM", "/usr/bin/chromium");
        for p in [&chromedriver, &chromium] {
            assert!(
                std::path::Path::new(p).exists(),
                "{p} is missing: the browser tests need Chromium and chromedriver (Debian: `apt-get install chromium \
                 chromium-driver`; or set CHROMIUM and CHROMEDRIVER)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-extensions",
                    "--window-size=1280,900", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }))
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let mut tries = 0;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 100, "chromedriver did not start a browser: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// What the page wrote to the console at level SEVERE (errors, failed loads, policy violations) since
    /// last asked.
    async fn console_errors(&self) -> Vec<String> {
        let logs = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("read the browser's log");
        logs.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Opens a page and checks it loaded without a console error.
    async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap();
        self.wait_css("main h1").await;
        self.assert_clean(url).await;
    }

    async fn assert_clean(&self, what: &str) {
        let errors = self.console_errors().await;
        assert!(errors.is_empty(), "console errors on {what}: {errors:#?}");
    }

    async fn wait_css(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
    }

    async fn click(&self, css: &str) {
        self.wait_css(css).await.click().await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.wait_css(css).await.text().await.unwrap()
    }

    /// Waits until `css`'s text satisfies `ok`.
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = std::time::Instant::now();
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await
                && let Ok(t) = e.text().await
                && ok(&t)
            {
                return t;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what} (`{css}`)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn stop(self) {
        let _ = self.client.close().await;
        if let Some(pid) = self.driver.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Where screenshots go: the committed folder when asked to update it, else the build's scratch folder.
fn screenshot_dir() -> PathBuf {
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots")
    }
}

/// chromedriver's log of the browser's console (`goog:loggingPrefs`), which fantoccini has no call for.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

async fn api(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = app.send(req).await;
    assert!(r.status.is_success(), "{path}: {} {}", r.status, r.body);
    r.body
}

/// A POST with a JSON body (none when `body` is null).
async fn api_post(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    api(
        app,
        token,
        reqwest::Method::POST,
        path,
        (!body.is_null()).then_some(body),
    )
    .await
}

async fn api_get(app: &TestApp, token: &str, path: &str) -> Value {
    api(app, token, reqwest::Method::GET, path, None).await
}

async fn status_of(app: &TestApp, token: &str, id: &str) -> String {
    api(
        app,
        token,
        reqwest::Method::GET,
        &format!("/api/v1/tasks/{id}"),
        None,
    )
    .await["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Parses CSV with quoted fields (what the export writes) into rows of fields.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            ('\r', false) => {}
            (c, _) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

async fn dashboard_in_a_browser(backend: Backend, screenshots: bool) {
    let (app, tokens) = spawn_with_tokens(backend, &[("boss", Role::Admin, None)], |c| {
        // Internal workers that run the built-in simulation, started later (by the test, then by the page).
        c.num_internal_workers = 2;
        c.auto_start_workers = false;
    })
    .await;
    let boss = tokens["boss"].clone();
    let b = Browser::start().await;
    // The console check can see an error (so that its silence below means something).
    b.client.goto(&app.url("/ui/login")).await.unwrap();
    b.client
        .execute("console.error('probe')", vec![])
        .await
        .unwrap();
    let seen = b.console_errors().await;
    assert!(seen.iter().any(|e| e.contains("probe")), "{seen:?}");
    let shot = |name: &'static str| {
        let b = &b;
        async move {
            if screenshots {
                b.screenshot(name).await;
            }
        }
    };

    // Log in once: the token goes into an HttpOnly cookie that scripts cannot read.
    b.client.goto(&app.url("/ui")).await.unwrap();
    b.wait_css("input#token").await;
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/ui/login")
    );
    b.assert_clean("the login page").await;
    shot("login").await;
    b.wait_css("input#token")
        .await
        .send_keys(&boss)
        .await
        .unwrap();
    b.click("form button.primary").await;
    b.wait_css("section[aria-labelledby=h-queue]").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/ui");
    let visible_cookies = b
        .client
        .execute("return document.cookie", vec![])
        .await
        .unwrap();
    assert!(
        !visible_cookies
            .as_str()
            .unwrap_or_default()
            .contains("tex_"),
        "{visible_cookies}"
    );
    b.assert_clean("the overview").await;

    // A task waits in the queue; its page is open while the workers start and run it.
    let task = api_post(&app, &boss, "/api/v1/tasks", json!({
            "problem_id": "misconfig_app_hotel_res-detection-1",
            "parameters": {"simulate": {"steps": 5, "step_ms": 400}, "agent_config": {"agent": "react", "model": "gpt-4o"}},
        }))
    .await;
    let id = task["id"].as_str().unwrap().to_owned();
    b.open(&app.url(&format!("/ui/tasks/{id}"))).await;
    assert_eq!(b.text("#task-status .badge").await, "pending");
    // A mark that a reload would wipe out.
    b.client
        .execute("window.__noReload = 42", vec![])
        .await
        .unwrap();
    api_post(&app, &boss, "/api/v1/workers/internal/start", Value::Null).await;
    b.wait_text("#task-status .badge", "the task running", |t| {
        t == "running"
    })
    .await;
    b.wait_text("#log tbody", "the runner's steps in the log", |t| {
        t.contains("step 2")
    })
    .await;
    shot("task-running").await;
    b.wait_text("#task-status .badge", "the task completed", |t| {
        t == "completed"
    })
    .await;
    b.wait_text("#task-provenance", "the result's provenance", |t| {
        t.contains("executor_version") && t.contains(env!("CARGO_PKG_VERSION"))
    })
    .await;
    b.wait_text("#following", "the log's end", |t| t == "finished")
        .await;
    let mark = b
        .client
        .execute("return window.__noReload", vec![])
        .await
        .unwrap();
    assert_eq!(mark, json!(42), "the page was reloaded");
    // The page now shows what the API says: the log entry by entry, the result and its metrics.
    let logs = api_get(&app, &boss, &format!("/api/v1/tasks/{id}/logs")).await;
    let logs = logs.as_array().unwrap();
    assert_eq!(
        b.count("#log tbody tr").await,
        logs.len(),
        "every log entry, once"
    );
    let page_messages: Vec<String> = {
        let mut v = Vec::new();
        for row in b
            .client
            .find_all(Locator::Css("#log tbody tr td.msg"))
            .await
            .unwrap()
        {
            v.push(
                row.text()
                    .await
                    .unwrap()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        v
    };
    let api_messages: Vec<String> = logs
        .iter()
        .map(|e| {
            e["message"]
                .as_str()
                .unwrap()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(page_messages, api_messages);
    b.wait_text("#live", "the result", |t| {
        t.contains("Success: yes") && t.contains("in_tokens")
    })
    .await;
    b.assert_clean("the task page, live").await;
    shot("task").await;
    // The level filter: only warnings and worse (none here).
    b.wait_css("select#level")
        .await
        .select_by_value("warning")
        .await
        .unwrap();
    b.wait_text("#log tbody", "the filtered log", |t| {
        t.contains("Nothing logged at this level")
    })
    .await;

    // The filter holds for what arrives live: a run followed at `error` shows its crash, not its steps.
    let crash = api_post(
        &app,
        &boss,
        "/api/v1/tasks",
        json!({"problem_id": "network_delay_hotel_res-detection-1", "priority": 10,
               "parameters": {"simulate": {"steps": 20, "step_ms": 300, "outcome": "crash"}}}),
    )
    .await;
    let crash_id = crash["id"].as_str().unwrap().to_owned();
    b.open(&app.url(&format!("/ui/tasks/{crash_id}?level=error")))
        .await;
    assert_eq!(
        b.text("#following").await,
        "following live",
        "opened while it runs"
    );
    b.wait_text("#log tbody", "the crash, live", |t| t.contains("crashes"))
        .await;
    b.wait_text("#task-status .badge", "the task failed", |t| t == "failed")
        .await;
    b.wait_text("#task-failure-kind", "its failure kind", |t| t == "agent")
        .await;
    let live_rows = b.text("#log tbody").await;
    assert!(
        !live_rows.contains("step 1"),
        "an info entry passed the error filter: {live_rows}"
    );
    b.assert_clean("the task page filtered live").await;

    // Cancel from the page: a run that would go on for minutes.
    let long = api_post(&app, &boss, "/api/v1/tasks", json!({"problem_id": "pod_failure_hotel_res-localization-1", "parameters": {"simulate": {"outcome": "hang"}}}))
    .await;
    let long_id = long["id"].as_str().unwrap().to_owned();
    wait_for(
        "the hanging task to run",
        Duration::from_secs(20),
        || async { (status_of(&app, &boss, &long_id).await == "running").then_some(()) },
    )
    .await;
    b.open(&app.url(&format!("/ui/tasks/{long_id}"))).await;
    b.click("form[action$='/cancel'] button").await;
    b.client.accept_alert().await.unwrap();
    b.wait_text("p.notice", "the cancel notice", |t| t.contains("cancelled"))
        .await;
    assert_eq!(b.text("#task-status .badge").await, "cancelled");
    assert_eq!(b.text("#task-failure-kind").await, "cancelled");
    assert_eq!(status_of(&app, &boss, &long_id).await, "cancelled");
    b.assert_clean("the cancelled task").await;

    // A campaign: 3 problems × 2 agents × 2 runs, one problem failing.
    let batch = api_post(&app, &boss, "/api/v1/batches", json!({
            "name": "nightly detection",
            "problems": ["misconfig_app_hotel_res-detection-1", "k8s_target_port-misconfig-detection-1", "revoke_auth_mongodb-detection-1"],
            "agent_configs": [{"agent": "react", "model": "gpt-4o"}, {"agent": "flash", "model": "gpt-4o-mini"}],
            "repetitions": 2,
            "parameters": {"simulate": {"steps": 2, "step_ms": 100}},
        }))
    .await;
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    let failing = api_post(&app, &boss, "/api/v1/tasks", json!({"problem_id": "network_loss_hotel_res-detection-1", "parameters": {"simulate": {"steps": 1, "step_ms": 50, "outcome": "crash"}}}))
    .await;
    let failing_id = failing["id"].as_str().unwrap().to_owned();
    b.open(&app.url("/ui/batches")).await;
    b.wait_text("table.batches tbody", "the batch listed", |t| {
        t.contains("nightly detection")
    })
    .await;
    b.wait_text(
        &format!("tr[data-batch-id='{batch_id}']"),
        "the batch finished, live",
        |t| t.contains("12 / 12"),
    )
    .await;
    b.assert_clean("the batch list").await;
    shot("batches").await;
    b.open(&app.url(&format!("/ui/batches/{batch_id}"))).await;
    assert_eq!(b.count("svg.bars g.bar").await, 3, "a bar per problem");
    assert!(
        b.count("svg.histogram g.bin").await >= 5,
        "a histogram of durations"
    );
    let stats = api_get(&app, &boss, &format!("/api/v1/batches/{batch_id}")).await;
    assert!(b.text("dl.facts").await.contains(&format!(
        "{} of {} finished",
        stats["succeeded"], stats["finished"]
    )));
    assert_eq!(b.count("table.results tbody tr[data-task-id]").await, 12);
    // The export link downloads (with the page's session) a CSV of one row per task.
    let href = b
        .wait_css("a#export-csv")
        .await
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let csv = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => r.text()).then(done, e => done('ERR ' + e));",
            vec![json!(href)],
        )
        .await
        .unwrap();
    let rows = parse_csv(csv.as_str().unwrap());
    assert_eq!(rows.len(), 13, "a header and 12 rows: {csv}");
    let header = &rows[0];
    let problem = header
        .iter()
        .position(|h| h == "problem_id")
        .expect("a problem_id column");
    let mut per_problem: HashMap<&str, usize> = HashMap::new();
    for r in &rows[1..] {
        assert_eq!(r.len(), header.len());
        *per_problem.entry(r[problem].as_str()).or_default() += 1;
    }
    assert_eq!(per_problem.len(), 3);
    assert!(per_problem.values().all(|n| *n == 4));
    // The heat map: 2 agents × 3 problems, every run a success (the simulation): each cell 100 % of 2, its
    // interval on hover, coloured through a class (no inline style under the page's CSP).
    assert_eq!(b.count("table.heat-map tbody tr").await, 2);
    assert_eq!(b.count("table.heat-map td.heat-10").await, 6);
    let title = b
        .wait_css("table.heat-map td.heat-10")
        .await
        .attr("title")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(title, "100 % of 2, 95 % interval [0.34, 1.00]");
    b.assert_clean("the batch page").await;
    shot("batch").await;
    // Across batches: the leaderboard page, which also counts the failing task's agent-less run.
    b.open(&app.url("/ui/leaderboard?cols=task_type")).await;
    b.wait_text(
        "table.heat-map thead",
        "the leaderboard by task type",
        |t| t.contains("detection"),
    )
    .await;
    assert!(
        b.text("table.heat-map tbody").await.contains("(none)"),
        "runs without an agent have a row of their own"
    );
    assert!(
        b.wait_css("a#board-csv")
            .await
            .attr("href")
            .await
            .unwrap()
            .unwrap()
            .contains("format=csv")
    );
    b.assert_clean("the leaderboard").await;

    // The overview agrees with the API, and shows the failure with its error's first line.
    wait_for("the crash to fail", Duration::from_secs(20), || async {
        (status_of(&app, &boss, &failing_id).await == "failed").then_some(())
    })
    .await;
    b.open(&app.url("/ui")).await;
    let completed = api_get(&app, &boss, "/api/v1/tasks?status=completed&limit=1000").await;
    let completed = completed.as_array().unwrap().len();
    assert_eq!(completed, 13);
    b.wait_text("a[data-count=completed] .n", "the completed count", |t| {
        t == completed.to_string()
    })
    .await;
    assert_eq!(b.text("a[data-count=cancelled] .n").await, "1");
    assert_eq!(b.text("#done-last-hour").await, completed.to_string());
    b.wait_text("section[aria-labelledby=h-failures]", "the failure", |t| {
        t.contains("network_loss_hotel_res-detection-1") && t.contains("simulated crash")
    })
    .await;
    // Live: a new task shows up in the counts without a reload.
    b.client
        .execute("window.__noReload = 7", vec![])
        .await
        .unwrap();
    api_post(&app, &boss, "/api/v1/tasks", json!({"problem_id": "misconfig_app_hotel_res-detection-1", "parameters": {"simulate": {"steps": 1, "step_ms": 10}}}))
    .await;
    b.wait_text("a[data-count=completed] .n", "the new task counted", |t| {
        t == (completed + 1).to_string()
    })
    .await;
    assert_eq!(
        b.client
            .execute("return window.__noReload", vec![])
            .await
            .unwrap(),
        json!(7)
    );
    b.assert_clean("the overview, live").await;
    shot("overview").await;

    // The task list, filtered by status from its form.
    b.open(&app.url("/ui/tasks")).await;
    assert_eq!(b.count("table.tasks tbody tr[data-task-id]").await, 17);
    shot("tasks").await;
    b.wait_css("select[name=status]")
        .await
        .select_by_value("failed")
        .await
        .unwrap();
    b.click("form.filters button[type=submit]").await;
    b.wait_text("table.tasks tbody", "only the failed tasks", |t| {
        t.contains("network_loss") && t.contains("network_delay")
    })
    .await;
    assert_eq!(b.count("table.tasks tbody tr[data-task-id]").await, 2);
    b.assert_clean("the filtered tasks").await;

    // The internal workers' controls: scale to 3, stop, start again.
    b.open(&app.url("/ui/workers")).await;
    assert_eq!(b.count("table.workers tbody tr[data-worker-id]").await, 2);
    let input = b.wait_css("input[name=num_workers]").await;
    input.clear().await.unwrap();
    input.send_keys("3").await.unwrap();
    b.click("form[action$='/scale'] button").await;
    b.wait_text("p.notice", "the scale notice", |t| t.contains("scaled"))
        .await;
    b.wait_text("#internal-count", "three internal workers", |t| t == "3")
        .await;
    let s = api_get(&app, &boss, "/api/v1/workers/internal/status").await;
    assert_eq!(s["num_workers"], 3);
    wait_for(
        "the third worker registered",
        Duration::from_secs(20),
        || async { (b.count("table.workers tbody tr[data-worker-id]").await == 3).then_some(()) },
    )
    .await;
    shot("workers").await;
    b.click("form[action$='/stop'] button").await;
    b.client.accept_alert().await.unwrap();
    b.wait_text("p.notice", "the stop notice", |t| t.contains("stopped"))
        .await;
    let s = api_get(&app, &boss, "/api/v1/workers/internal/status").await;
    assert_eq!(s["running"], false);
    b.click("form[action$='/start'] button").await;
    b.wait_text("p.notice", "the start notice", |t| t.contains("started"))
        .await;
    let s = api_get(&app, &boss, "/api/v1/workers/internal/status").await;
    assert_eq!(s["running"], true);
    assert_eq!(s["num_workers"], 3);
    b.assert_clean("the workers page").await;

    // On a phone's screen.
    if screenshots {
        b.client.set_window_size(390, 844).await.unwrap();
        b.open(&app.url("/ui")).await;
        shot("overview-phone").await;
    }
    b.stop().await;
}

#[tokio::test]
async fn dashboard_in_a_browser_sqlite() {
    dashboard_in_a_browser(Backend::Sqlite, true).await;
}

#[tokio::test]
async fn dashboard_in_a_browser_postgres() {
    dashboard_in_a_browser(Backend::Postgres, false).await;
}
