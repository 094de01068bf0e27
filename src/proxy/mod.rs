//! The request pipeline: Fulcrum's [`ProxyHttp`] implementation.
//!
//! Each hook is a few lines that call the module owning the concern, in the order of a request's
//! life:
//!
//! 1. `early_request_filter` — who the client is ([`TrustedProxies`]), the request id; a
//!    WebSocket ([`is_websocket_upgrade`]) waits on the client up to `websocket_idle_timeout`.
//! 2. `request_filter` — ACME HTTP-01 challenges answered on the plain listener
//!    ([`Challenges`], before anything else); plain HTTP redirected to https when configured;
//!    per-client rate limit ([`RateLimiter`]): 429 when over ([`responses`]).
//! 3. `upstream_peer` — [`upstream::choose`] a backend; on a retry, wait the backoff and take
//!    the backend chosen when the retry was decided. Backend reads and writes wait up to
//!    `request_timeout`, or `websocket_idle_timeout` for a WebSocket.
//! 4. `fail_to_connect` / `error_while_proxy` — the attempt ended badly: [`upstream::verdict`]
//!    says whether the backend is blamed and whether to retry; a retry happens when
//!    [`RetryPolicy`] allows it (attempts, budget) and another backend can take it.
//! 5. `upstream_request_filter` — forwarded headers (believed only from trusted proxies,
//!    [`write_forwarded`]), `X-Request-Id`.
//! 6. `upstream_response_filter` — latency average; a failure status counts against the breaker,
//!    a `101` settles the attempt as a success (a WebSocket's later end is not a verdict);
//!    a 502/503/504 to an idempotent request is retried on another backend before anything
//!    reaches the client, and passed through as it is when no retry is possible.
//! 7. `response_filter` — echo `X-Request-Id`.
//! 8. `fail_to_proxy` — a short plain-text error ([`responses`]: 503 no backend, 502 backends
//!    failed, 504 timeout).
//! 9. `logging` — the attempt's final outcome for the breaker (a failure mid-body counts),
//!    metrics, and the JSON access-log line (queued, written by another thread).
//!
//! The pipeline holds no lock across an await, and allocates per request only what pingora's
//! API requires (the peer box) plus the request-id header value.
//!
//! [`ProxySettings`] can be replaced while running (a reload): each request takes the settings
//! in force when it starts and keeps them to its end, so one request never mixes two versions.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};

mod ctx;
mod settings;

pub use ctx::Ctx;
pub use settings::{LiveSettings, ProxySettings};

use crate::access_log::AccessEntry;
use crate::acme::Challenges;
use crate::backend::BackendSet;
use crate::balance::Balancer;
use crate::headers::{
    forwarded_for_values, https_location, is_websocket_upgrade, write_forwarded, RequestIds,
};
use crate::metrics::{Metrics, RequestRecord};
use crate::responses;
use crate::retry::RetryDecision;
use crate::sticky::{SessionStats, Sessions};
use crate::time::rfc3339;
use crate::upstream::{self, verdict, Attempt, AttemptEnd, Refusal};

/// The load balancer's request pipeline.
pub struct Proxy {
    backends: Arc<BackendSet<Balancer>>,
    metrics: Arc<Metrics>,
    settings: Arc<LiveSettings>,
    ids: RequestIds,
    /// The HTTP-01 answers, when ACME is on.
    acme: Option<Arc<Challenges>>,
    /// Sticky sessions, when on.
    sessions: Option<Arc<Sessions>>,
}

impl Proxy {
    /// A pipeline selecting from `backends`, each request with the `settings` in force when it
    /// starts.
    pub fn new(
        backends: Arc<BackendSet<Balancer>>,
        metrics: Arc<Metrics>,
        settings: Arc<LiveSettings>,
        id_prefix: u64,
    ) -> Self {
        Self {
            backends,
            metrics,
            settings,
            ids: RequestIds::new(id_prefix),
            acme: None,
            sessions: None,
        }
    }

    /// Keeps clients on the backend their session cookie pins them to.
    pub fn with_sessions(mut self, sessions: Arc<Sessions>) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// An attempt at the backend the client's session is pinned to, when it has one and that
    /// backend can take the request now (healthy, breaker closed, not draining, not full).
    async fn pinned(
        &self,
        sessions: &Sessions,
        session: &Session,
        ctx: &mut Ctx,
        now: Instant,
    ) -> Option<Attempt> {
        let (token, backend) = sessions
            .lookup(session.req_header(), SystemTime::now())
            .await;
        ctx.session_token = token;
        ctx.pinned = backend;
        let state = self.backends.get(ctx.pinned.as_deref()?)?;
        upstream::choose_pinned(&state, now)
    }

    /// After the backend's answer: a session that was not on the backend that answered is
    /// pinned there (a new client, an unknown cookie, or a failover), with a new cookie.
    async fn keep_session(
        &self,
        sessions: &Sessions,
        response: &mut ResponseHeader,
        ctx: &Ctx,
    ) -> Result<()> {
        let Some(served) = ctx.backend().map(|b| b.id()) else {
            return Ok(());
        };
        let now = SystemTime::now();
        let counter = match (ctx.pinned.as_deref(), ctx.session_token.as_deref()) {
            (Some(pinned), Some(token)) if pinned == served => {
                SessionStats::count(&sessions.stats.hits);
                if let Some(cookie) = sessions.refresh(token, served, ctx.tls, now).await {
                    response.append_header(http::header::SET_COOKIE, cookie)?;
                }
                return Ok(());
            }
            (Some(_), _) => &sessions.stats.repins,
            (None, _) => &sessions.stats.misses,
        };
        SessionStats::count(counter);
        let previous = ctx.session_token.as_deref();
        if let Some(cookie) = sessions.pin(previous, served, ctx.tls, now).await {
            response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        Ok(())
    }

    /// Answers the ACME HTTP-01 challenges in `challenges` on the plain listener, before
    /// anything else.
    pub fn answering_acme(mut self, challenges: Arc<Challenges>) -> Self {
        self.acme = Some(challenges);
        self
    }

    /// Chooses a backend for this request's next attempt, avoiding the ones it already tried.
    fn choose(&self, session: &Session, ctx: &Ctx, now: Instant) -> Result<Attempt, Refusal> {
        let mut ip_buf = [0u8; 16];
        let key = ctx
            .settings
            .key
            .resolve(session.req_header(), ctx.client_ip, &mut ip_buf);
        upstream::choose(&self.backends, key, &ctx.tried, now)
    }

    /// After the current attempt failed as `end`: settle it, and choose the backend of a retry
    /// when the policy allows one. Returns whether the request is retried.
    fn after_failure(&self, session: &Session, ctx: &mut Ctx, end: AttemptEnd) -> bool {
        let now = Instant::now();
        let started = session.response_written().is_some();
        let v = verdict(end, Self::replayable(session), started);
        ctx.end_attempt(v.backend_failed, now);
        v.retry && self.prepare_retry(session, ctx, now)
    }

    /// Chooses the backend of a retry (avoiding every backend in `ctx.tried`) and asks the
    /// retry policy (attempts, budget). Returns whether the retry happens. Attempts are checked
    /// before choosing, since choosing moves the rotating strategies on; the budget after, so
    /// it is spent only on a retry that has somewhere to go.
    fn prepare_retry(&self, session: &Session, ctx: &mut Ctx, now: Instant) -> bool {
        if !ctx.settings.retry.attempts_left(ctx.attempts) {
            return false;
        }
        let Ok(next) = self.choose(session, ctx, now) else {
            return false; // nobody left to try: the last answer or error stands
        };
        if !self.may_retry(ctx, now) {
            return false; // `next` drops: its count and breaker permit are released
        }
        ctx.next = Some(next);
        true
    }

    /// Whether a failed attempt may be retried (attempts left, budget), counted in the metrics.
    fn may_retry(&self, ctx: &Ctx, now: Instant) -> bool {
        match ctx.settings.retry.decide(ctx.attempts, now) {
            RetryDecision::Retry => {
                self.metrics.record_retry();
                true
            }
            RetryDecision::BudgetSpent => {
                self.metrics.record_budget_exhausted();
                false
            }
            RetryDecision::AttemptsUsed => false,
        }
    }

    /// Whether pingora can replay this request (idempotent, body within its retry buffer).
    fn replayable(session: &Session) -> bool {
        session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated()
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.settings.load_full())
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = ctx.peer_ip.map(|peer| {
            ctx.settings
                .trusted_proxies
                .client_ip(peer, forwarded_for_values(session.req_header()))
        });
        ctx.request_id = self.ids.for_request(session.get_header("x-request-id"));
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.websocket = is_websocket_upgrade(session.req_header());
        if ctx.websocket {
            // pingora's default 60 s per client read would cut a quiet WebSocket
            let idle = Some(ctx.settings.websocket_idle_timeout);
            session.set_read_timeout(idle);
            session.set_write_timeout(idle);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(acme) = self.acme.as_ref().filter(|_| !ctx.tls) {
            if acme.answer(session).await? {
                return Ok(true);
            }
        }
        if let Some(port) = ctx.settings.https_redirect.filter(|_| !ctx.tls) {
            if let Some(location) = https_location(session.req_header(), port) {
                responses::write_redirect(session, location, ctx.request_id.as_ref()).await?;
                return Ok(true);
            }
        }
        let (Some(limiter), Some(client)) = (&ctx.settings.rate_limit, ctx.client_ip) else {
            return Ok(false);
        };
        let decision = limiter.check(&client);
        if decision.allowed {
            return Ok(false);
        }
        self.metrics.record_rate_limited();
        responses::write_rate_limited(session, &decision, ctx.request_id.as_ref()).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut attempt = match ctx.next.take() {
            Some(next) => {
                tokio::time::sleep(ctx.settings.retry.delay(ctx.attempts)).await;
                next
            }
            None => {
                let now = Instant::now();
                ctx.settings.retry.record_request(now);
                let pinned = match &self.sessions {
                    Some(sessions) => self.pinned(sessions, session, ctx, now).await,
                    None => None,
                };
                match pinned {
                    Some(attempt) => attempt,
                    None => self.choose(session, ctx, now).map_err(|refusal| {
                        ctx.refusal = Some(refusal);
                        Error::explain(ErrorType::HTTPStatus(503), refusal.detail())
                    })?,
                }
            }
        };
        let mut peer = attempt.state().new_peer();
        peer.options.connection_timeout = Some(ctx.settings.connect_timeout);
        let io_timeout = match ctx.websocket {
            true => ctx.settings.websocket_idle_timeout,
            false => ctx.settings.request_timeout,
        };
        peer.options.read_timeout = Some(io_timeout);
        peer.options.write_timeout = Some(io_timeout);
        attempt.begin(Instant::now());
        ctx.attempts += 1;
        ctx.attempt = Some(attempt);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = self.after_failure(session, ctx, AttemptEnd::ConnectFailed);
        e.set_retry(retry);
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
        if std::mem::take(&mut ctx.retrying_status) {
            return e; // upstream_response_filter already ended the attempt and decided
        }
        let end = if client_reused && matches!(e.retry, RetryType::ReusedOnly) {
            AttemptEnd::StalePooled
        } else {
            match e.esource() {
                ErrorSource::Downstream => AttemptEnd::ClientGone,
                ErrorSource::Upstream => AttemptEnd::UpstreamBroken,
                ErrorSource::Internal | ErrorSource::Unset => AttemptEnd::Internal {
                    pingora_retry: {
                        e.retry.decide_reuse(client_reused);
                        e.retry()
                    },
                },
            }
        };
        let retry = self.after_failure(session, ctx, end);
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        write_forwarded(
            upstream,
            ctx.peer_ip,
            ctx.client_ip,
            &ctx.settings.trusted_proxies,
            if ctx.tls { "https" } else { "http" },
        )?;
        if let Some(id) = &ctx.request_id {
            upstream.insert_header("X-Request-Id", id.clone())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let now = Instant::now();
        let status = response.status.as_u16();
        if response.status.is_informational() && status != 101 {
            return Ok(()); // 100 Continue / 103 Early Hints: the final answer is still to come
        }
        let Some(attempt) = ctx.attempt.as_mut() else {
            return Ok(());
        };
        let took = now.saturating_duration_since(attempt.started());
        attempt.state().stats.record_latency(took);
        attempt.state().stats.record_response(status);
        ctx.upstream_time = Some(took);
        let failure_status = ctx.settings.failure_statuses.contains(status);
        ctx.switched = (status == 101).then(|| now.saturating_duration_since(ctx.started));
        if failure_status || status == 101 {
            attempt.settle(!failure_status, now); // what a WebSocket does later is no verdict
        } // any other success is settled when the whole response went through (see `logging`)
        let end = AttemptEnd::Status {
            status,
            failure_status,
        };
        if !verdict(end, Self::replayable(session), false).retry {
            return Ok(());
        }
        // A gateway error to a replayable request: retry elsewhere before anything reaches the
        // client, when a backend and the budget allow; otherwise pass the answer through.
        let current = attempt.state().clone();
        ctx.tried.push(current);
        if !self.prepare_retry(session, ctx, now) {
            ctx.tried.pop();
            return Ok(());
        }
        if let Some(mut attempt) = ctx.attempt.take() {
            attempt.settle(!failure_status, now);
            attempt.release(); // already in `tried`
        }
        ctx.upstream_time = None;
        ctx.retrying_status = true;
        let mut e = Error::explain(
            ErrorType::HTTPStatus(status),
            "backend answered with a gateway error; retrying elsewhere",
        );
        e.set_retry(true);
        Err(e)
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
        if let Some(sessions) = &self.sessions {
            self.keep_session(sessions, response, ctx).await?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = responses::status_for(e);
        // Once the backend's head reached the client, an error page would corrupt the response:
        // just close the connection.
        if code > 0 && session.response_written().is_none() {
            let written =
                responses::write_error(session, code, ctx.refusal, ctx.request_id.as_ref()).await;
            if let Err(err) = written {
                log::debug!("could not send the {code} response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _e: &Error) -> bool {
        // "no backend" is the access log's business, not an error of the proxy
        ctx.refusal.is_some()
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // The last attempt's outcome, now that the whole response went through (or not): a
        // backend that fails mid-body counts against its breaker; a client that went away
        // counts against nobody.
        if let Some(attempt) = ctx.attempt.as_mut() {
            match e {
                None => attempt.settle(true, Instant::now()),
                Some(err) if err.esource() == &ErrorSource::Upstream => {
                    attempt.settle(false, Instant::now())
                }
                Some(_) => {}
            }
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.metrics.record_request(&RequestRecord {
            status,
            // a WebSocket's request lasts until it closes: its latency is up to the switch
            total: ctx.switched.unwrap_or_else(|| ctx.started.elapsed()),
            upstream: ctx.upstream_time,
            backend: ctx.backend(),
            attempts: ctx.attempts,
        });
        let Some(log) = &ctx.settings.access_log else {
            return;
        };
        let req = session.req_header();
        log.log(&AccessEntry {
            time: rfc3339(std::time::SystemTime::now()),
            client: ctx.client_ip,
            method: req.method.as_str(),
            path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            status,
            backend: ctx.backend().map(|b| b.id()),
            attempts: ctx.attempts,
            upstream_ms: ctx.upstream_time.map(|d| d.as_secs_f64() * 1e3),
            total_ms: ctx.started.elapsed().as_secs_f64() * 1e3,
            bytes: session.body_bytes_sent(),
            request_id: ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
            error: e.map(|e| e.to_string()),
        });
    }
}
