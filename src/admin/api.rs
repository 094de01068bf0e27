//! `/api/backends`: change backends at run time, without a restart and without dropping
//! requests.
//!
//! | call | effect |
//! |---|---|
//! | `GET /api/backends` | list backends with their live state |
//! | `GET /api/backends/{id}` | one backend |
//! | `POST /api/backends` | add one (JSON body: `{id, url, weight, capacity, tags, protocol, tls_verify, ca_file}`, validated like the config file) |
//! | `DELETE /api/backends/{id}` | drain it (no new requests), wait for its requests in flight (up to `shutdown_timeout`), remove it |
//! | `POST /api/backends/{id}/drain` | stop sending it new requests |
//! | `POST /api/backends/{id}/undrain` | send it requests again |
//! | `PUT` or `PATCH /api/backends/{id}` | change its weight: `{"weight": 5}` |
//! | `POST /api/reload` | re-read the configuration file and apply it ([`crate::reload`]): 200 with what changed, 422 with every problem of an invalid file (nothing changed), 409 when there is no file or the backends conflict with ones added here |
//!
//! Every change goes through the [`BackendSet`] and takes effect at once. Its typed
//! [`SetError`]s become statuses in one place (`ApiError`'s `From<SetError>`): unknown id 404, duplicate id
//! or address 409, invalid field 400. Mutating calls need
//! `Authorization: Bearer <admin_token>`; with no token configured they are refused (403).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderValue, Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{error_response, json_response, AdminRequest, AdminState};
use crate::backend::{BackendServer, BackendSet, BackendState, SetError, UpstreamProtocol, Weight};
use crate::balance::Balancer;
use crate::reload::ReloadError;

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
    /// `h1` or `h2`.
    pub protocol: UpstreamProtocol,
    /// Whether an https backend's certificate is verified.
    pub tls_verify: bool,
    /// The backend's own CA file, if any.
    pub ca_file: Option<PathBuf>,
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
            protocol: config.protocol,
            tls_verify: config.tls_verify,
            ca_file: config.ca_file,
            health: b.health.status().as_str(),
            breaker: b.breaker_state(),
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
const BACKEND_FIELDS: [&str; 8] = [
    "id",
    "url",
    "weight",
    "capacity",
    "tags",
    "protocol",
    "tls_verify",
    "ca_file",
];

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
            let v = v.clone();
            let ok = match **f {
                "id" | "url" => serde_json::from_value::<String>(v).is_ok(),
                "weight" => serde_json::from_value::<u32>(v).is_ok(),
                "capacity" => serde_json::from_value::<u64>(v).is_ok(),
                "protocol" => serde_json::from_value::<UpstreamProtocol>(v).is_ok(),
                "tls_verify" => serde_json::from_value::<bool>(v).is_ok(),
                "ca_file" => serde_json::from_value::<Option<PathBuf>>(v).is_ok(),
                _ => serde_json::from_value::<BTreeMap<String, String>>(v).is_ok(),
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
    let token = state.token.load();
    let Some(token) = token.as_deref() else {
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

impl From<SetError> for ApiError {
    fn from(e: SetError) -> Self {
        let code = match &e {
            SetError::UnknownId(_) => StatusCode::NOT_FOUND,
            SetError::DuplicateId(_) | SetError::DuplicateAddress { .. } => StatusCode::CONFLICT,
            SetError::Invalid { .. } => StatusCode::BAD_REQUEST,
            SetError::Rebuild(_) | SetError::Runtime(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(code, e.to_string())
    }
}

/// The answer to a refused reload: the summary and every problem.
#[derive(Serialize)]
struct ReloadRefused {
    error: String,
    errors: Vec<String>,
}

/// Handles `POST /api/reload`: re-reads the configuration file and applies it.
pub async fn reload(state: &AdminState, req: &AdminRequest) -> Response<Vec<u8>> {
    if let Err(e) = authorize(state, req) {
        return e.into_response();
    }
    let Some(reloader) = &state.reload else {
        return ApiError::new(StatusCode::CONFLICT, ReloadError::NoFile.to_string())
            .into_response();
    };
    let file = reloader
        .file()
        .map_or_else(String::new, |f| format!(" {}", f.display()));
    match reloader.reload().await {
        Ok(report) => json_response(StatusCode::OK, &report),
        Err(e) => {
            let (code, error) = match &e {
                ReloadError::NoFile => (StatusCode::CONFLICT, e.to_string()),
                ReloadError::Invalid(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("configuration{file} is invalid; nothing changed"),
                ),
                ReloadError::Backends(_) => (
                    StatusCode::CONFLICT,
                    format!(
                        "configuration{file} conflicts with the running backends; nothing changed"
                    ),
                ),
            };
            json_response(
                code,
                &ReloadRefused {
                    error,
                    errors: e.messages(),
                },
            )
        }
    }
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
    let set = &state.backends;
    match (&req.method, segments.as_slice()) {
        (_, []) if reading => {
            let list: Vec<BackendView> =
                set.snapshot().iter().map(|b| BackendView::of(b)).collect();
            Ok(json_response(StatusCode::OK, &list))
        }
        (_, [id]) if reading => {
            let b = set.get(id).ok_or(SetError::UnknownId(id.to_string()))?;
            Ok(json_response(StatusCode::OK, &BackendView::of(&b)))
        }
        (&Method::POST, []) => add(set, req).await,
        (&Method::DELETE, [id]) => remove(set, id, state.drain_timeout).await,
        (&Method::POST, [id, "drain"]) => Ok(json_response(
            StatusCode::OK,
            &BackendView::of(&*set.drain(id)?),
        )),
        (&Method::POST, [id, "undrain"]) => Ok(json_response(
            StatusCode::OK,
            &BackendView::of(&*set.undrain(id)?),
        )),
        (&Method::PUT | &Method::PATCH, [id]) => {
            let change: WeightChange = serde_json::from_slice(&req.body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"weight\": N}}: {e}"),
                )
            })?;
            let weight = Weight::new(change.weight)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
            let b = set.set_weight(id, weight).await?;
            Ok(json_response(StatusCode::OK, &BackendView::of(&b)))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no API call {} {}", req.method, req.path),
        )),
    }
}

async fn add(
    set: &BackendSet<Balancer>,
    req: &AdminRequest,
) -> Result<Response<Vec<u8>>, ApiError> {
    let server = parse_backend(&req.body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let b = set.add_server(server).await?;
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

async fn remove(
    set: &BackendSet<Balancer>,
    id: &str,
    wait: Duration,
) -> Result<Response<Vec<u8>>, ApiError> {
    let removal = set.remove(id, wait).await?;
    log::info!(
        "admin API: removed backend {id} (drained: {})",
        removal.drained
    );
    Ok(json_response(
        StatusCode::OK,
        &Removed {
            removed: BackendView::of(&removal.state),
            drained: removal.drained,
            waited_ms: removal.waited.as_millis() as u64,
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
        let tls = parse_backend(
            br#"{"id":"s","url":"https://h","protocol":"h2","tls_verify":false,"ca_file":null}"#,
        )
        .unwrap();
        assert_eq!(
            (tls.protocol, tls.tls_verify, tls.ca_file),
            (UpstreamProtocol::H2, false, None)
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
            (
                br#"{"id":"a","url":"http://a:1","protocol":"h3"}"#,
                "protocol: expected h1 or h2, got \"h3\"",
            ),
            (
                br#"{"id":"a","url":"https://a:1","tls_verify":"no"}"#,
                "tls_verify: invalid type",
            ),
            (
                br#"{"id":"a","url":"https://a:1","ca_file":1}"#,
                "ca_file: invalid type",
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
