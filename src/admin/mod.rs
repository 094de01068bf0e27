//! The admin listener (default `127.0.0.1:9090`), separate from the traffic port so a backend's
//! own paths are never shadowed.
//!
//! | route | |
//! |---|---|
//! | `GET /health` | backends' health (the seed's JSON) and TLS certificates; 200 while one backend is healthy, else 503 |
//! | `GET /ready` | 200 while serving, 503 once shutdown has begun |
//! | `GET /metrics` | Prometheus text; JSON snapshot with `Accept: application/json` or `?format=json` |
//! | `/api/backends...` | list, add, remove, drain, set weight (mutations need the bearer token) |
//! | `POST /api/reload` | re-read the configuration file and apply it in place (bearer token) |
//! | `GET /` | the live dashboard |
//!
//! This module parses the request and routes it; each route's module builds the response.

pub mod api;
pub mod dashboard;
pub mod health;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde::Serialize;

use crate::backend::BackendSet;
use crate::balance::Balancer;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::sticky::Sessions;
use crate::tls::{CertInfo, SniResolver};

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// What the admin routes work on.
pub struct AdminState {
    /// The backends: read for every report, changed by the API.
    pub backends: Arc<BackendSet<Balancer>>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Bearer token required for mutating API calls; `None` refuses them. A reload may
    /// replace it.
    pub token: Arc<ArcSwapOption<String>>,
    /// Applies the configuration file again (`POST /api/reload`).
    pub reload: Option<Arc<Reloader>>,
    /// Longest a removal waits for a draining backend's requests to finish.
    pub drain_timeout: Duration,
    /// The TLS listener's certificates, when TLS is on (read for `/health` and `/metrics`).
    pub tls: Option<Arc<SniResolver>>,
    /// Sticky sessions, when on (read for `/health` and `/metrics`).
    pub sessions: Option<Arc<Sessions>>,
}

impl AdminState {
    /// The certificates the TLS listener serves now (none without TLS).
    fn certificates(&self) -> Vec<CertInfo> {
        self.tls.as_ref().map(|t| t.infos()).unwrap_or_default()
    }
}

/// One admin request, parsed.
pub struct AdminRequest {
    /// Method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Request headers.
    pub headers: http::HeaderMap,
    /// Body (at most 64 KiB).
    pub body: Bytes,
}

impl AdminRequest {
    /// A request header's value as text.
    pub fn header(&self, name: impl http::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether the query string has `key=value`.
    pub fn query_has(&self, key: &str, value: &str) -> bool {
        self.query
            .split('&')
            .any(|kv| kv.split_once('=') == Some((key, value)))
    }
}

/// The admin HTTP application.
pub struct AdminApp {
    state: Arc<AdminState>,
}

impl AdminApp {
    /// An admin app over `state`.
    pub fn new(state: AdminState) -> Self {
        Self {
            state: Arc::new(state),
        }
    }

    /// Routes one request.
    pub async fn route(&self, req: &AdminRequest, shutting_down: bool) -> Response<Vec<u8>> {
        let state = &self.state;
        match (&req.method, req.path.as_str()) {
            (&Method::GET | &Method::HEAD, "/health") => {
                let (code, report) = health::report(&state.backends.snapshot(), SystemTime::now());
                let report = report
                    .with_certificates(&state.certificates())
                    .with_sessions(state.sessions.as_ref().map(|s| s.report()));
                json_response(code, &report)
            }
            (&Method::GET | &Method::HEAD, "/ready") => health::ready(shutting_down),
            (&Method::GET | &Method::HEAD, "/metrics") => metrics_response(state, req),
            (&Method::GET | &Method::HEAD, "/" | "/dashboard") => dashboard::page(),
            (_, p) if p == "/api/backends" || p.starts_with("/api/backends/") => {
                api::handle(state, req).await
            }
            (&Method::POST, "/api/reload") => api::reload(state, req).await,
            (_, "/api/reload") => error_response(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
            (_, "/health" | "/ready" | "/metrics" | "/") => {
                error_response(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            }
            (_, p) => error_response(StatusCode::NOT_FOUND, format!("no admin endpoint {p}")),
        }
    }
}

fn metrics_response(state: &AdminState, req: &AdminRequest) -> Response<Vec<u8>> {
    if !state.metrics.enabled() {
        return error_response(
            StatusCode::NOT_FOUND,
            "metrics are disabled (metrics_enabled: false)",
        );
    }
    let backends = state.backends.snapshot();
    let wants_json = req.query_has("format", "json")
        || req
            .header(http::header::ACCEPT)
            .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        json_response(StatusCode::OK, &state.metrics.json_snapshot(&backends))
    } else {
        let text = state.metrics.prometheus_text(
            &backends,
            &state.certificates(),
            state.sessions.as_ref().map(|s| s.report()).as_ref(),
        );
        let mut resp = Response::new(text.into_bytes());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }
}

/// A JSON response.
pub fn json_response<T: Serialize + ?Sized>(code: StatusCode, body: &T) -> Response<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    let mut resp = Response::new(bytes);
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// A JSON error `{"error": "..."}`.
pub fn error_response(code: StatusCode, msg: impl AsRef<str>) -> Response<Vec<u8>> {
    json_response(
        code,
        &ErrorBody {
            error: msg.as_ref(),
        },
    )
}

/// Reads the request body, up to [`MAX_BODY`] bytes.
async fn read_body(session: &mut ServerSession) -> Result<Bytes, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body over 64 KiB",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.into()),
            Err(e) => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                ))
            }
        }
    }
}

#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        let shutting_down = *shutdown.borrow();
        session.set_keepalive(if shutting_down { None } else { Some(60) });
        let head = session.req_header();
        let mut req = AdminRequest {
            method: head.method.clone(),
            path: head.uri.path().to_string(),
            query: head.uri.query().unwrap_or("").to_string(),
            headers: head.headers.clone(),
            body: Bytes::new(),
        };
        let mut resp = match read_body(&mut session).await {
            Ok(body) => {
                req.body = body;
                self.route(&req, shutting_down).await
            }
            Err(resp) => resp,
        };
        resp.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        let (parts, body) = resp.into_parts();
        let mut header: ResponseHeader = parts.into();
        let len = body.len();
        if header
            .insert_header(http::header::CONTENT_LENGTH, len)
            .is_err()
        {
            return None;
        }
        if session
            .write_response_header(Box::new(header))
            .await
            .is_err()
        {
            return None;
        }
        if req.method != Method::HEAD && !body.is_empty() {
            if let Err(e) = session.write_response_body(body.into(), true).await {
                log::debug!("admin: cannot write the response: {e}");
                return None;
            }
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent)),
            _ => None,
        }
    }
}
