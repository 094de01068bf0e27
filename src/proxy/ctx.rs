//! [`Ctx`]: the state of one request as it goes through the pipeline.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;

use super::ProxySettings;
use crate::backend::BackendState;
use crate::upstream::{Attempt, Refusal};

/// Per-request state. Dropped when the request ends, which releases the in-flight count and any
/// unreported breaker probe.
#[derive(Debug)]
pub struct Ctx {
    pub(super) started: Instant,
    /// The settings in force when the request started.
    pub(super) settings: Arc<ProxySettings>,
    /// The socket peer (appended to `X-Forwarded-For`).
    pub(super) peer_ip: Option<IpAddr>,
    /// The client connection is TLS (`X-Forwarded-Proto: https`).
    pub(super) tls: bool,
    /// The client as far as we trust (rate limit, IP hash).
    pub(super) client_ip: Option<IpAddr>,
    pub(super) request_id: Option<HeaderValue>,
    /// The request asks to become a WebSocket.
    pub(super) websocket: bool,
    /// From the start to the backend's `101`, once it switched.
    pub(super) switched: Option<Duration>,
    /// Attempts made so far (1 after the first `upstream_peer`).
    pub(super) attempts: u32,
    /// The current attempt.
    pub(super) attempt: Option<Attempt>,
    /// The backend chosen for the retry that was just decided (taken after the backoff).
    pub(super) next: Option<Attempt>,
    /// Backends that failed earlier attempts of this request.
    pub(super) tried: Vec<Arc<BackendState>>,
    /// The current attempt failed with a status we are retrying on.
    pub(super) retrying_status: bool,
    /// Time from choosing the backend to its response headers.
    pub(super) upstream_time: Option<Duration>,
    pub(super) refusal: Option<Refusal>,
    /// The client's session cookie value, if it sent one that could be ours.
    pub(super) session_token: Option<String>,
    /// The backend its session was pinned to, if the store knew it.
    pub(super) pinned: Option<Arc<str>>,
}

impl Ctx {
    pub(super) fn new(settings: Arc<ProxySettings>) -> Self {
        Self {
            started: Instant::now(),
            settings,
            peer_ip: None,
            tls: false,
            client_ip: None,
            request_id: None,
            websocket: false,
            switched: None,
            attempts: 0,
            attempt: None,
            next: None,
            tried: Vec::new(),
            retrying_status: false,
            upstream_time: None,
            refusal: None,
            session_token: None,
            pinned: None,
        }
    }

    /// The backend of the current attempt, or of the last failed one.
    pub fn backend(&self) -> Option<&Arc<BackendState>> {
        self.attempt
            .as_ref()
            .map(|a| a.state())
            .or(self.tried.last())
    }

    /// Number of attempts made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Ends the current attempt: blame its backend (`failed`) or release it without a verdict,
    /// and remember it so a retry goes elsewhere.
    pub(super) fn end_attempt(&mut self, failed: bool, now: Instant) {
        self.upstream_time = None;
        if let Some(attempt) = self.attempt.take() {
            let state = if failed {
                attempt.fail(now)
            } else {
                attempt.release()
            };
            self.tried.push(state);
        }
    }
}
