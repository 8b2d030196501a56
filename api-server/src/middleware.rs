//! The outermost middleware, around every route: assigns the request id (the client's own when usable) and
//! opens the request's tracing span, refuses state-changing requests sent from another site, finds out the
//! caller (its token) and applies the rate limit, bounds the body and checks that declared JSON parses and holds no NUL
//! (nor the query string), turns every
//! error — poem's and poem-openapi's own included (unknown route, wrong method, wrong content type, bad
//! parameter) — into the specification's JSON body, and records the HTTP metrics by route template.
//!
//! poem's own `RequestId` and `SizeLimit` middleware do not fit: the first echoes any incoming id unchecked
//! (any length, any bytes, into logs) and sets no header on error answers; the second answers 411 to a body
//! without `Content-Length` and cannot bound a chunked one.

use std::sync::Arc;

use poem::{
    Endpoint, IntoResponse, PathPattern, Request, Response,
    error::{MethodNotAllowedError, NotFoundError, ReadBodyError},
    http::{HeaderValue, StatusCode, header},
};
use poem_openapi::error::{
    ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
};
use tracing::Instrument;

use crate::{
    auth,
    error::{REQUEST_ID, body, request_id},
    metrics::Metrics,
    ratelimit::RateLimiter,
};

/// What the edge needs.
pub struct Edge {
    pub metrics: Arc<Metrics>,
    pub allow: AllowTable,
    /// How long a request body may take to arrive (a client that trickles it is cut off with 408).
    pub body_timeout: std::time::Duration,
    pub auth: Arc<auth::Registry>,
    pub limiter: Option<Arc<RateLimiter>>,
}

/// Why a state-changing request is refused as coming from another site, if it is: a browser says where a
/// request comes from (`Sec-Fetch-Site`, `Origin`), so a page elsewhere that makes the user's browser post a
/// form or a `no-cors` fetch to this server (which may be on loopback, without authentication) is stopped
/// here. Clients that are not browsers send neither header and pass.
fn cross_site(req: &Request) -> Option<String> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    // A WebSocket handshake is a GET that a page elsewhere could open to read a task's events.
    let websocket = header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    if matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS") && !websocket {
        return None;
    }
    if let Some(site) = header("sec-fetch-site")
        && matches!(site, "cross-site" | "same-site")
    {
        return Some(format!(
            "a {site} request may not change anything here (Sec-Fetch-Site: {site})"
        ));
    }
    if let Some(origin) = header("origin") {
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        // Behind a reverse proxy that rewrites `Host`, the public name arrives as `X-Forwarded-Host` (which a
        // page cannot set on a request it sends elsewhere without the server's consent).
        let host = header("host");
        let forwarded = header("x-forwarded-host");
        if authority.is_none() || !(authority == host || authority == forwarded) {
            return Some(format!(
                "a request from origin `{origin}` may not change anything on this server (its pages are at {})",
                host.unwrap_or("its own address")
            ));
        }
    }
    None
}

const NUL_REFUSED: &str =
    "text must not contain the NUL character (\\u0000): the database cannot store it";

/// Whether a string or key anywhere in `v` holds NUL, which PostgreSQL cannot store in text (so it is
/// refused on both backends alike).
fn holds_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Whether the `Host` a request was addressed to is a loopback name or address (`localhost`, `127.x.x.x`,
/// `[::1]`, any port).
fn addressed_to_loopback(req: &Request) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a path is the dashboard's.
fn is_ui(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The request's `Authorization` header; else the dashboard's session cookie, on the dashboard's own pages and
/// forms and on reading requests (the pages' event streams and export links; the API's state-changing
/// operations still need the header); for the live streams, whose browser clients (`EventSource`,
/// `WebSocket`) cannot set headers, also an `access_token` query parameter.
fn bearer(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        return v.to_str().ok().map(str::to_owned);
    }
    let path = req.uri().path();
    if (is_ui(path) || matches!(req.method().as_str(), "GET" | "HEAD"))
        && let Some(token) = crate::ui::session_token(req)
    {
        return Some(format!("Bearer {token}"));
    }
    if !(path.starts_with("/ws/") || path.ends_with("/events")) {
        return None;
    }
    let query = req.uri().query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "access_token").then(|| format!("Bearer {v}"))
    })
}

/// Status and `type` of an error that poem or poem-openapi raised before a handler ran.
fn classify(err: &poem::Error) -> (StatusCode, &'static str, String) {
    if err.is::<NotFoundError>() {
        return (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route".to_owned(),
        );
    }
    if err.is::<MethodNotAllowedError>() {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route".to_owned(),
        );
    }
    if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        // The body was already checked to be syntactically valid JSON: what is left is its shape or values.
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            task_executor_shared::validate::plain_reason(&e.reason),
        );
    }
    if let Some(e) = err.downcast_ref::<ParseParamError>() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            format!(
                "parameter `{}`: {}",
                e.name,
                task_executor_shared::validate::plain_reason(&e.reason)
            ),
        );
    }
    if let Some(e) = err.downcast_ref::<ParsePathError>() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            format!("invalid path parameter: {}", e.reason),
        );
    }
    if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        );
    }
    let status = err.status();
    if status.is_server_error() {
        return (status, "internal_error", err.to_string());
    }
    (status, "error", err.to_string())
}

fn json_error(status: StatusCode, kind: &str, detail: impl Into<String>) -> Response {
    let mut resp = body(kind, detail).into_response();
    resp.set_status(status);
    resp
}

fn is_json(resp: &Response) -> bool {
    resp.content_type()
        .is_some_and(|ct| ct.starts_with("application/json"))
}

/// The request with its URI and header values in allocations of their own.
///
/// hyper parses a request's head in place: the URI and every header value are slices of the connection's
/// 8 KiB read buffer, which therefore stays allocated for as long as the request lives, while hyper reads on
/// into a new buffer. Copying the few hundred bytes they take frees it, for each long poll waiting and each
/// stream open (measured: 1,000 waiting claims, 58 -> 53 MiB resident). An upgrade request (WebSocket) is left
/// as it is, since rebuilding it would lose its upgrade handle.
fn own_head(req: Request) -> Request {
    if req.headers().contains_key(header::UPGRADE) {
        return req;
    }
    let (local, remote, scheme) = (
        req.local_addr().clone(),
        req.remote_addr().clone(),
        req.scheme().clone(),
    );
    let (parts, body) = req.into_parts();
    let (mut head, ()) = poem::http::Request::new(()).into_parts();
    head.uri = poem::http::Uri::try_from(parts.uri.to_string()).unwrap_or(parts.uri);
    head.headers.reserve(parts.headers.len());
    for (name, value) in &parts.headers {
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        head.headers.append(name.clone(), copy);
    }
    head.method = parts.method;
    head.version = parts.version;
    head.extensions = parts.extensions;
    Request::from_parts((head, local, remote, scheme).into(), body)
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// The outermost middleware: assigns the request id, opens the request's tracing span, bounds and checks the
/// body, turns every error into the specification's JSON body, and records the HTTP metrics by route template.
pub async fn edge<E: Endpoint>(
    next: Arc<E>,
    req: Request,
    edge: Arc<Edge>,
) -> poem::Result<Response> {
    let started = std::time::Instant::now();
    let mut req = own_head(req);
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let body_timeout = edge.body_timeout;
    let edge_in = edge.clone();
    let path_in = path.clone();
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::new_v4().simple()));
    let header_value = HeaderValue::from_str(&rid).expect("request ids are visible ASCII");
    let span = tracing::info_span!("request", request_id = %rid, method = %method, path = %req.uri().path());
    let mut route: Option<String> = None;
    let route_slot = &mut route;
    let mut resp = REQUEST_ID
        .scope(rid, async move {
            if let Some(why) = cross_site(&req) {
                return json_error(StatusCode::FORBIDDEN, "cross_site_request", why);
            }
            // Without tokens the server is on loopback and trusts whoever reaches it; a page elsewhere could
            // still reach it through DNS rebinding (its own name resolving to 127.0.0.1, same-origin to the
            // browser), so only requests addressed to a loopback name are answered.
            if edge_in.auth.open_on_loopback() && !addressed_to_loopback(&req) {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "host_not_allowed",
                    "without authentication this server answers only requests addressed to localhost, \
                     127.0.0.1 or [::1]; create an API token to serve other names",
                );
            }
            let caller = edge_in.auth.caller(bearer(&req).as_deref());
            if let Some(limiter) = &edge_in.limiter
                && !matches!(req.uri().path(), "/health" | "/ready")
                && let Err(wait) = limiter.check(
                    &caller,
                    req.remote_addr().as_socket_addr().map(|a| a.ip()),
                )
            {
                let mut resp = json_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many requests: try again in {wait} s"),
                );
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
                return resp;
            }
            req.extensions_mut().insert(caller);
            let read = tokio::time::timeout(body_timeout, req.take_body().into_bytes_limit(MAX_BODY_BYTES));
            let Ok(read) = read.await else {
                return json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!("the request body did not arrive within {} s", body_timeout.as_secs()),
                );
            };
            let bytes = match read {
                Ok(b) => b,
                Err(ReadBodyError::PayloadTooLarge) => {
                    return json_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("request body is larger than {MAX_BODY_BYTES} bytes"),
                    );
                }
                Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
            };
            let declares_json = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"));
            if declares_json && !bytes.is_empty() {
                match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Err(e) => {
                        return json_error(StatusCode::BAD_REQUEST, "malformed_json", format!("malformed JSON: {e}"));
                    }
                    Ok(v) if holds_nul(&v) => {
                        return json_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_error", NUL_REFUSED);
                    }
                    Ok(_) => {}
                }
            }
            if req.uri().query().is_some_and(|q| q.to_ascii_lowercase().contains("%00")) {
                return json_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_error", NUL_REFUSED);
            }
            req.set_body(bytes);
            match next.call(req).await {
                Ok(resp) => {
                    let resp = resp.into_response();
                    *route_slot = resp.data::<PathPattern>().map(|p| p.0.to_string());
                    if resp.status().is_client_error() || resp.status().is_server_error() {
                        // The dashboard answers its errors as pages.
                        if is_json(&resp) || is_ui(&path_in) {
                            return resp;
                        }
                        let status = resp.status();
                        return json_error(status, "error", status.canonical_reason().unwrap_or("error"));
                    }
                    resp
                }
                Err(err) => {
                    *route_slot = err.data::<PathPattern>().map(|p| p.0.to_string());
                    let (status, kind, detail) = classify(&err);
                    let resp = err.into_response();
                    if is_json(&resp) && resp.status() == status {
                        // Already one of ours (an ApiError raised by a handler).
                        return resp;
                    }
                    if status.is_server_error() {
                        // Logged in full here, answered opaquely.
                        tracing::error!(request_id = %request_id(), error = %detail, "internal error");
                        return json_error(status, kind, "internal server error");
                    }
                    json_error(status, kind, detail)
                }
            }
        })
        .instrument(span)
        .await;
    resp.headers_mut().insert("x-request-id", header_value);
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(allow) = edge.allow.allowed(&path)
        && let Ok(v) = HeaderValue::from_str(allow)
    {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    edge.metrics.http_request(
        route
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "unmatched".to_owned()),
        method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(resp)
}

/// The methods each path of the API answers, read from its own OpenAPI document: what a 405 lists in its
/// `Allow` header.
pub struct AllowTable {
    /// Path templates split in segments (`{…}` matches any one segment), with their methods.
    paths: Vec<(Vec<String>, String)>,
}

impl AllowTable {
    pub fn from_spec(spec: &str) -> AllowTable {
        let doc: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let mut paths = Vec::new();
        if let Some(map) = doc.get("paths").and_then(|p| p.as_object()) {
            for (path, ops) in map {
                let mut methods: Vec<String> = ops
                    .as_object()
                    .map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect())
                    .unwrap_or_default();
                methods.sort();
                let segments = path.split('/').map(str::to_owned).collect();
                paths.push((segments, methods.join(", ")));
            }
        }
        AllowTable { paths }
    }

    /// The `Allow` value of a request path, when it is one of the API's.
    pub fn allowed(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        self.paths
            .iter()
            .filter(|(template, _)| {
                template.len() == segments.len()
                    && template
                        .iter()
                        .zip(&segments)
                        .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
            })
            // A literal segment beats a parameter (`/workers/internal/status` over `/workers/{id}/…`).
            .max_by_key(|(template, _)| template.iter().filter(|t| !t.starts_with('{')).count())
            .map(|(_, methods)| methods.as_str())
    }
}

#[cfg(test)]
mod tests {
    use poem::http::{HeaderValue, Method, header};

    use super::*;

    #[test]
    fn the_copied_head_is_the_same_head() {
        let mut secret = HeaderValue::from_static("Bearer s3cret");
        secret.set_sensitive(true);
        let mut req = Request::builder()
            .method(Method::PUT)
            .uri_str("/api/v1/tasks?status=pending&limit=5")
            .header("x-many", "one")
            .header("x-many", "two")
            .header(header::AUTHORIZATION, secret)
            .header("x-opaque", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap())
            .body("{}");
        req.extensions_mut().insert(7_u32);
        let req = own_head(req);
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(req.uri(), "/api/v1/tasks?status=pending&limit=5");
        assert_eq!(req.original_uri(), req.uri());
        let many: Vec<_> = req.headers().get_all("x-many").iter().collect();
        assert_eq!(many, ["one", "two"]);
        let auth = &req.headers()[header::AUTHORIZATION];
        assert_eq!(auth, "Bearer s3cret");
        assert!(auth.is_sensitive(), "still kept out of debug output");
        assert_eq!(req.headers()["x-opaque"].as_bytes(), b"caf\xc3\xa9");
        assert_eq!(req.extensions().get::<u32>(), Some(&7));
        assert_eq!(req.headers().len(), 4);
    }
}
