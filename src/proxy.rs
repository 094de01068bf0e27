//! The request pipeline: Fulcrum's [`ProxyHttp`] implementation.
//!
//! Each hook is a few lines that call the module owning the concern, in the order of a request's
//! life:
//!
//! 1. `early_request_filter` — note the client address and the request id.
//! 2. `upstream_peer` — pick a backend: the configured strategy proposes candidates, the accept
//!    filter admits one (not unhealthy, under capacity, not already tried by this request), an
//!    [`InFlightGuard`] counts it.
//! 3. `fail_to_connect` / `error_while_proxy` — record the failure; a connect failure (nothing
//!    was sent) is retried on another backend, up to `max_retries`.
//! 4. `upstream_request_filter` — `X-Forwarded-For/-Proto/-Host` and `X-Request-Id`.
//! 5. `upstream_response_filter` — fold the time to response headers into the latency average.
//! 6. `response_filter` — echo `X-Request-Id` to the client.
//! 7. `fail_to_proxy` — a short plain-text error: 503 when no backend is admitted, 502 when the
//!    backends failed.
//! 8. `logging` — the access-log line.
//!
//! The proxy holds no lock and allocates per request only what pingora's API requires (the peer
//! box) plus the request-id header value.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use pingora_load_balancing::{Backend, LoadBalancer as Pool};

use crate::backend::{state_of, BackendState, InFlightGuard, Registry};
use crate::balance::{max_iterations, Balancer, HashKey, Strategy};

/// Settings the pipeline reads on every request, taken from the config once.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The selection strategy (decides which request key is hashed).
    pub strategy: Strategy,
    /// What consistent hashing hashes.
    pub hash_key: HashKey,
    /// Extra attempts after the first one fails to connect.
    pub max_retries: u32,
    /// TCP connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Per-read and per-write timeout on the upstream connection.
    pub request_timeout: Duration,
    /// Whether to write an access-log line per request.
    pub logging_enabled: bool,
    /// `X-Forwarded-Proto` value: `http` or `https`.
    pub scheme: &'static str,
}

/// Why no backend could take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No backend is admitted (none configured, or all unhealthy).
    NoBackend,
    /// Admitted backends exist but all are at their `capacity`.
    AllFull,
}

/// Per-request state. Dropped when the request ends, which releases the in-flight count.
#[derive(Debug)]
pub struct Ctx {
    started: Instant,
    client_ip: Option<IpAddr>,
    request_id: Option<HeaderValue>,
    /// Attempts made so far (1 after the first `upstream_peer`).
    attempts: u32,
    /// The backend of the current attempt.
    current: Option<InFlightGuard>,
    /// Backends that failed earlier attempts.
    tried: Vec<Arc<BackendState>>,
    /// When the current attempt's backend was chosen.
    attempt_started: Option<Instant>,
    /// Time from choosing the backend to its response headers, for the access log.
    upstream_time: Option<Duration>,
    refusal: Option<Refusal>,
}

impl Ctx {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            client_ip: None,
            request_id: None,
            attempts: 0,
            current: None,
            tried: Vec::new(),
            attempt_started: None,
            upstream_time: None,
            refusal: None,
        }
    }

    /// The backend of the current (last) attempt.
    pub fn backend(&self) -> Option<&Arc<BackendState>> {
        self.current.as_ref().map(|g| g.state())
    }

    /// Number of attempts made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The current attempt failed: remember its backend so a retry goes elsewhere.
    fn fail_current(&mut self) {
        if let Some(guard) = self.current.take() {
            guard.state().stats.record_failure();
            self.tried.push(guard.state().clone());
        }
    }

    fn was_tried(&self, state: &Arc<BackendState>) -> bool {
        self.tried.iter().any(|t| Arc::ptr_eq(t, state))
    }
}

/// Unique request ids: a random per-process prefix and a scrambled counter, 32 hex digits.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    /// A generator whose ids start with `prefix` (random in production).
    pub fn new(prefix: u64) -> Self {
        Self {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next_id(&self) -> [u8; 32] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut out = [0u8; 32];
        write_hex(&mut out[..16], self.prefix);
        write_hex(&mut out[16..], scramble(n));
        out
    }
}

/// A bijective 64-bit mixer (SplitMix64's finaliser): distinct counters give distinct ids.
fn scramble(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn write_hex(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// A client-supplied request id is kept when it is short and printable.
fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// The load balancer's request pipeline.
pub struct Proxy {
    pool: Arc<Pool<Balancer>>,
    registry: Arc<Registry>,
    settings: ProxySettings,
    ids: RequestIds,
}

impl Proxy {
    /// A pipeline selecting from `pool`, whose backends' states are in `registry`.
    pub fn new(
        pool: Arc<Pool<Balancer>>,
        registry: Arc<Registry>,
        settings: ProxySettings,
        id_prefix: u64,
    ) -> Self {
        Self {
            pool,
            registry,
            settings,
            ids: RequestIds::new(id_prefix),
        }
    }

    /// Picks a backend for this attempt, or says why none can take it.
    fn select(&self, session: &Session, ctx: &Ctx) -> std::result::Result<Backend, Refusal> {
        let mut ip_buf = [0u8; 16];
        let key = self.hash_key(session, ctx, &mut ip_buf);
        let steps = max_iterations(self.registry.len());
        let full = std::cell::Cell::new(false);
        let admit = |b: &Backend, allow_tried: bool| {
            let Some(state) = state_of(b) else {
                return false;
            };
            if !state.health.status().admits() || (!allow_tried && ctx.was_tried(state)) {
                return false;
            }
            if !state.has_capacity() {
                full.set(true);
                return false;
            }
            true
        };
        if let Some(b) = self.pool.select_with(key, steps, |b, _| admit(b, false)) {
            return Ok(b);
        }
        // Every untried backend is out: a retry may go back to one that failed before.
        if !ctx.tried.is_empty() {
            if let Some(b) = self.pool.select_with(key, steps, |b, _| admit(b, true)) {
                return Ok(b);
            }
        }
        Err(if full.get() {
            Refusal::AllFull
        } else {
            Refusal::NoBackend
        })
    }

    /// The bytes the hash-based strategies hash; empty for the others.
    fn hash_key<'a>(&self, session: &'a Session, ctx: &Ctx, ip_buf: &'a mut [u8; 16]) -> &'a [u8] {
        let ip_key = |buf: &'a mut [u8; 16]| -> &'a [u8] {
            match ctx.client_ip {
                Some(IpAddr::V4(v4)) => {
                    buf[..4].copy_from_slice(&v4.octets());
                    &buf[..4]
                }
                Some(IpAddr::V6(v6)) => {
                    *buf = v6.octets();
                    &buf[..]
                }
                None => &[],
            }
        };
        match self.settings.strategy {
            Strategy::IpHash => ip_key(ip_buf),
            Strategy::ConsistentHashing => {
                let req = session.req_header();
                let found = match &self.settings.hash_key {
                    HashKey::ClientIp => None,
                    HashKey::Path => Some(req.uri.path().as_bytes()),
                    HashKey::Header(name) => req.headers.get(name).map(|v| v.as_bytes()),
                    HashKey::Cookie(name) => cookie_value(req, name),
                };
                match found {
                    Some(k) => k,
                    None => ip_key(ip_buf),
                }
            }
            _ => &[],
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let rest = pair.strip_prefix(name.as_bytes())?;
            rest.strip_prefix(b"=")
        })
}

/// `X-Forwarded-For` for the upstream request: the client's list with the peer appended.
fn forwarded_for(req: &RequestHeader, client: IpAddr) -> String {
    let mut out = String::new();
    for v in req.headers.get_all("x-forwarded-for") {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                out.push_str(s);
                out.push_str(", ");
            }
        }
    }
    use std::fmt::Write;
    let _ = write!(out, "{client}");
    out
}

fn refusal_error(r: Refusal) -> Box<Error> {
    let why = match r {
        Refusal::NoBackend => "no healthy backend available",
        Refusal::AllFull => "every backend is at capacity",
    };
    Error::explain(ErrorType::HTTPStatus(503), why)
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.request_id = match session.get_header("x-request-id") {
            Some(v) if acceptable_request_id(v) => Some(v.clone()),
            _ => HeaderValue::from_bytes(&self.ids.next_id()).ok(),
        };
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let backend = match self.select(session, ctx) {
            Ok(b) => b,
            Err(refusal) => {
                ctx.refusal = Some(refusal);
                return Err(refusal_error(refusal));
            }
        };
        let state = state_of(&backend)
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "backend without state"))?;
        ctx.attempts += 1;
        ctx.refusal = None;
        ctx.attempt_started = Some(Instant::now());
        let mut peer = HttpPeer::new(state.addr, false, String::new());
        peer.options.connection_timeout = Some(self.settings.connect_timeout);
        peer.options.read_timeout = Some(self.settings.request_timeout);
        peer.options.write_timeout = Some(self.settings.request_timeout);
        ctx.current = Some(InFlightGuard::new(state));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.fail_current();
        // Nothing reached the backend, so any method may be retried elsewhere.
        e.set_retry(ctx.attempts <= self.settings.max_retries);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // Bytes may have reached the backend: pingora's rule (idempotent methods whose body fit
        // the retry buffer, stale pooled connections) decides, within our attempt budget.
        if ctx.attempts > self.settings.max_retries
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        if e.esource() == &ErrorSource::Upstream {
            ctx.fail_current();
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(ip) = ctx.client_ip {
            upstream.insert_header("X-Forwarded-For", forwarded_for(session.req_header(), ip))?;
        }
        upstream.insert_header("X-Forwarded-Proto", self.settings.scheme)?;
        let host = session.get_header(http::header::HOST).cloned().or_else(|| {
            session
                .req_header()
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        match host {
            Some(h) => upstream.insert_header("X-Forwarded-Host", h)?,
            None => {
                upstream.remove_header("X-Forwarded-Host");
            }
        }
        if let Some(id) = &ctx.request_id {
            upstream.insert_header("X-Request-Id", id.clone())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(start), Some(state)) = (ctx.attempt_started, ctx.backend()) {
            let took = start.elapsed();
            state.stats.record_latency(took);
            ctx.upstream_time = Some(took);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(id) = &ctx.request_id {
            response.insert_header("X-Request-Id", id.clone())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            if let Err(err) = write_error(session, code, e, ctx).await {
                log::debug!("could not send the {code} response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if !self.settings.logging_enabled {
            return;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        let backend = ctx.backend().map_or("-", |s| s.id());
        let request_id = ctx
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let client = ctx
            .client_ip
            .map_or_else(|| "-".to_string(), |ip| ip.to_string());
        log::info!(
            target: "fulcrum::access",
            "{client} \"{} {}\" {status} backend={backend} attempts={} upstream_ms={:.1} total_ms={:.1} request_id={request_id}{}",
            req.method,
            req.uri,
            ctx.attempts,
            ctx.upstream_time.map_or(0.0, |d| d.as_secs_f64() * 1e3),
            ctx.started.elapsed().as_secs_f64() * 1e3,
            e.map(|e| format!(" error=\"{e}\"")).unwrap_or_default(),
        );
    }
}

/// Writes a short plain-text error response.
async fn write_error(session: &mut Session, code: u16, e: &Error, ctx: &Ctx) -> Result<()> {
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let detail = match (code, ctx.refusal) {
        (503, Some(Refusal::NoBackend)) => "no healthy backend available",
        (503, Some(Refusal::AllFull)) => "every backend is at capacity",
        (502, _) => "the backend failed to answer",
        _ => "",
    };
    let body = if detail.is_empty() {
        format!("{code} {reason}\n")
    } else {
        format!("{code} {reason}: {detail}\n")
    };
    let mut resp = ResponseHeader::build(code, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CONNECTION, "close")?;
    if ctx.refusal == Some(Refusal::AllFull) {
        resp.insert_header(http::header::RETRY_AFTER, "1")?;
    }
    if let Some(id) = &ctx.request_id {
        resp.insert_header("X-Request-Id", id.clone())?;
    }
    log::debug!("request failed with {code}: {e}");
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_hex_and_distinct() {
        let ids = RequestIds::new(0xabcd);
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert!(a.iter().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(&a[..16], b"000000000000abcd");
    }

    #[test]
    fn keeps_only_sane_client_request_ids() {
        let cases = [
            ("abc-123", true),
            ("", false),
            ("has space", false),
            (&*"x".repeat(129), false),
            (&*"x".repeat(128), true),
        ];
        for (v, want) in cases {
            let hv = HeaderValue::from_str(v).unwrap();
            assert_eq!(acceptable_request_id(&hv), want, "{v:?}");
        }
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let client: IpAddr = "10.1.2.3".parse().unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&[], "10.1.2.3"),
            (&["1.1.1.1"], "1.1.1.1, 10.1.2.3"),
            (
                &["1.1.1.1, 2.2.2.2", "3.3.3.3"],
                "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3",
            ),
            (&[" "], "10.1.2.3"),
        ];
        for (existing, want) in cases {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            for v in *existing {
                req.append_header("X-Forwarded-For", *v).unwrap();
            }
            assert_eq!(forwarded_for(&req, client), *want, "{existing:?}");
        }
    }

    #[test]
    fn finds_cookie_values() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("Cookie", "a=1; session=xyz").unwrap();
        req.append_header("Cookie", "sess=no; b=2").unwrap();
        assert_eq!(cookie_value(&req, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie_value(&req, "b"), Some(&b"2"[..]));
        assert_eq!(cookie_value(&req, "sess"), Some(&b"no"[..]));
        assert_eq!(cookie_value(&req, "c"), None);
    }
}
