//! `/api/backends`: change backends at run time, without a restart and without dropping
//! requests.
//!
//! | call | effect |
//! |---|---|
//! | `GET /api/backends` | list backends with their live state |
//! | `GET /api/backends/{id}` | one backend |
//! | `POST /api/backends` | add one (JSON body: `{id, url, weight, capacity, tags}`, validated like the config file) |
//! | `DELETE /api/backends/{id}` | drain it (no new requests), wait for its requests in flight (up to `shutdown_timeout`), remove it |
//! | `POST /api/backends/{id}/drain` | stop sending it new requests |
//! | `POST /api/backends/{id}/undrain` | send it requests again |
//! | `PUT` or `PATCH /api/backends/{id}` | change its weight: `{"weight": 5}` |
//!
//! Every change takes effect at once: the registry changes, then pingora's selector is rebuilt,
//! so selection, health checks, metrics and `/health` all see it. Mutating calls need
//! `Authorization: Bearer <admin_token>`; with no token configured they are refused (403).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{error_response, json_response, AdminRequest, AdminState};
use crate::backend::{BackendServer, BackendState};

/// A backend as the API shows it.
#[derive(Debug, Serialize)]
pub struct BackendView {
    /// Id.
    pub id: String,
    /// URL.
    pub url: String,
    /// Current weight.
    pub weight: u32,
    /// Max requests in flight (0 = unlimited).
    pub capacity: u64,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// `unknown`, `healthy` or `unhealthy`.
    pub health: &'static str,
    /// Breaker state, or `disabled`.
    pub breaker: &'static str,
    /// Whether it is draining.
    pub draining: bool,
    /// Requests in flight.
    pub active_connections: u64,
    /// Requests sent to it.
    pub requests: u64,
    /// Failed attempts.
    pub failures: u64,
}

impl BackendView {
    /// The view of one backend.
    pub fn of(b: &BackendState) -> Self {
        let config = b.config();
        Self {
            id: config.id,
            url: config.url,
            weight: config.weight,
            capacity: config.capacity,
            tags: config.tags,
            health: b.health.status().as_str(),
            breaker: b
                .breaker
                .as_ref()
                .map_or("disabled", |br| br.state().as_str()),
            draining: b.is_draining(),
            active_connections: b.stats.in_flight(),
            requests: b.stats.requests(),
            failures: b.stats.failures(),
        }
    }
}

/// Body of a weight change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightChange {
    weight: u32,
}

/// Fields a new backend may have, for error messages.
const BACKEND_FIELDS: [&str; 5] = ["id", "url", "weight", "capacity", "tags"];

/// Parses a new backend, naming the offending field on error.
pub fn parse_backend(body: &[u8]) -> Result<BackendServer, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let Value::Object(map) = &value else {
        return Err("body must be a JSON object {\"id\": ..., \"url\": ...}".into());
    };
    if let Some(unknown) = map.keys().find(|k| !BACKEND_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "{unknown}: unknown field; expected {}",
            BACKEND_FIELDS.join(", ")
        ));
    }
    for required in ["id", "url"] {
        if !map.contains_key(required) {
            return Err(format!("{required}: missing"));
        }
    }
    serde_json::from_value::<BackendServer>(value.clone()).map_err(|e| {
        // serde names unknown and missing fields but not the field of a type error: find it
        let field = BACKEND_FIELDS.iter().find(|f| {
            let Some(v) = map.get(**f) else { return false };
            let ok = match **f {
                "id" | "url" => serde_json::from_value::<String>(v.clone()).is_ok(),
                "weight" => serde_json::from_value::<u32>(v.clone()).is_ok(),
                "capacity" => serde_json::from_value::<u64>(v.clone()).is_ok(),
                _ => serde_json::from_value::<BTreeMap<String, String>>(v.clone()).is_ok(),
            };
            !ok
        });
        match field {
            Some(f) => format!("{f}: {e}"),
            None => e.to_string(),
        }
    })
}

/// A refused API call: its status and message.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    message: String,
}

impl ApiError {
    fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn into_response(self) -> Response<Vec<u8>> {
        let mut resp = error_response(self.code, self.message);
        if self.code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Checks `Authorization: Bearer <token>`.
fn authorize(state: &AdminState, req: &AdminRequest) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin API changes are disabled: set admin_token or admin_token_file",
        ));
    };
    let given = req
        .header(http::header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong Authorization: Bearer token",
    ))
}

/// Compares without an early exit, so timing does not reveal a common prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, y) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ y;
    }
    diff == 0
}

/// Rebuilds pingora's backend set and selector from the registry.
async fn refresh(state: &AdminState) -> Result<(), ApiError> {
    state.pool.refresh().await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot apply the change: {e}"),
        )
    })
}

fn find(state: &AdminState, id: &str) -> Result<Arc<BackendState>, ApiError> {
    state
        .registry
        .get(id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no backend {id:?}")))
}

/// Handles one `/api/backends...` request.
pub async fn handle(state: &AdminState, req: &AdminRequest) -> Response<Vec<u8>> {
    dispatch(state, req)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn dispatch(state: &AdminState, req: &AdminRequest) -> Result<Response<Vec<u8>>, ApiError> {
    let rest = req.path.strip_prefix("/api/backends").unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let reading = matches!(req.method, Method::GET | Method::HEAD);
    if !reading {
        authorize(state, req)?;
    }
    match (&req.method, segments.as_slice()) {
        (_, []) if reading => {
            let list: Vec<BackendView> = state
                .registry
                .snapshot()
                .iter()
                .map(|b| BackendView::of(b))
                .collect();
            Ok(json_response(StatusCode::OK, &list))
        }
        (_, [id]) if reading => Ok(json_response(
            StatusCode::OK,
            &BackendView::of(&*find(state, id)?),
        )),
        (&Method::POST, []) => add(state, req).await,
        (&Method::DELETE, [id]) => remove(state, id).await,
        (&Method::POST, [id, action @ ("drain" | "undrain")]) => {
            let b = find(state, id)?;
            b.set_draining(*action == "drain");
            Ok(json_response(StatusCode::OK, &BackendView::of(&b)))
        }
        (&Method::PUT | &Method::PATCH, [id]) => {
            let b = find(state, id)?;
            let change: WeightChange = serde_json::from_slice(&req.body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"weight\": N}}: {e}"),
                )
            })?;
            b.set_weight(change.weight)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
            refresh(state).await?;
            Ok(json_response(StatusCode::OK, &BackendView::of(&b)))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no API call {} {}", req.method, req.path),
        )),
    }
}

async fn add(state: &AdminState, req: &AdminRequest) -> Result<Response<Vec<u8>>, ApiError> {
    let server = parse_backend(&req.body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let registry = state.registry.clone();
    // validation may resolve a host name: keep blocking DNS off the admin runtime's thread
    let added = tokio::task::spawn_blocking(move || registry.add(server))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let b = added.map_err(|e| {
        let code = if e.contains("already exists") || e.contains("same address") {
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(code, e)
    })?;
    refresh(state).await?;
    log::info!("admin API: added backend {} ({})", b.id(), b.server.url);
    Ok(json_response(StatusCode::CREATED, &BackendView::of(&b)))
}

#[derive(Serialize)]
struct Removed {
    removed: BackendView,
    /// Whether every request in flight finished before removal.
    drained: bool,
    waited_ms: u64,
}

async fn remove(state: &AdminState, id: &str) -> Result<Response<Vec<u8>>, ApiError> {
    let b = find(state, id)?;
    b.set_draining(true);
    let started = Instant::now();
    let deadline = started + state.drain_timeout;
    while b.stats.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = b.stats.in_flight() == 0;
    state.registry.remove(id);
    refresh(state).await?;
    log::info!("admin API: removed backend {id} (drained: {drained})");
    Ok(json_response(
        StatusCode::OK,
        &Removed {
            removed: BackendView::of(&b),
            drained,
            waited_ms: started.elapsed().as_millis() as u64,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backends_and_names_bad_fields() {
        let ok =
            parse_backend(br#"{"id":"w4","url":"http://127.0.0.1:9","weight":2,"tags":{"a":"b"}}"#)
                .unwrap();
        assert_eq!(
            (ok.id.as_str(), ok.weight, ok.tags["a"].as_str()),
            ("w4", 2, "b")
        );
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not valid JSON"),
            (b"[1]", "must be a JSON object"),
            (br#"{"url":"http://a:1"}"#, "id: missing"),
            (br#"{"id":"a"}"#, "url: missing"),
            (
                br#"{"id":"a","url":"http://a:1","wieght":2}"#,
                "wieght: unknown field",
            ),
            (
                br#"{"id":"a","url":"http://a:1","weight":"2"}"#,
                "weight: invalid type",
            ),
            (
                br#"{"id":"a","url":"http://a:1","capacity":-1}"#,
                "capacity: invalid value",
            ),
            (
                br#"{"id":"a","url":"http://a:1","tags":[1]}"#,
                "tags: invalid type",
            ),
        ];
        for (body, want) in cases {
            let err = parse_backend(body).unwrap_err();
            assert!(
                err.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn compares_tokens_fully() {
        assert!(constant_time_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-124", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-1234", b"secret-token-123"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
