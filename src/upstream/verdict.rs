//! The retry and failure policy as one pure function: how an attempt ended, whether the request
//! can be replayed and whether anything reached the client decide whether the backend is blamed
//! and whether the request may be tried again. Whether it *is* tried again then depends on the
//! attempts left and the retry budget ([`crate::retry::RetryPolicy`]) and on a backend being
//! left to try ([`super::choose`]).

/// How an attempt at a backend ended, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The connection could not be made: nothing reached the backend.
    ConnectFailed,
    /// A pooled connection the backend had already closed (pingora's "reused only" error):
    /// the backend did nothing wrong.
    StalePooled,
    /// The client went away or misbehaved: nobody to blame upstream, nobody to answer.
    ClientGone,
    /// The backend failed after the connection was made: reset, timeout, malformed answer.
    UpstreamBroken,
    /// Fulcrum itself failed; `pingora_retry` is pingora's own opinion of a retry.
    Internal {
        /// Whether pingora marked the error retryable.
        pingora_retry: bool,
    },
    /// The backend answered with a final status.
    Status {
        /// The status.
        status: u16,
        /// Whether it is one of `failure_status_codes`.
        failure_status: bool,
    },
}

/// What the policy decided about one ended attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Count a failure against the backend (stats, breaker, latency penalty).
    pub backend_failed: bool,
    /// The request may be tried again, budget and backends permitting.
    pub retry: bool,
}

/// Decides an ended attempt. `replayable`: the request is idempotent and its body is still in
/// pingora's retry buffer. `response_started`: a response head already reached the client.
///
/// A connect failure is always retryable (nothing was sent). After bytes went up only a
/// replayable request is retried, and never once the client has a response head. A status is
/// retried only when it is a gateway error (502, 503, 504), and counts against the backend
/// only when it is one of `failure_status_codes`.
pub fn verdict(end: AttemptEnd, replayable: bool, response_started: bool) -> Verdict {
    let replay = replayable && !response_started;
    let (backend_failed, retry) = match end {
        AttemptEnd::ConnectFailed => (true, true),
        AttemptEnd::StalePooled => (false, replay),
        AttemptEnd::ClientGone => (false, false),
        AttemptEnd::UpstreamBroken => (true, replay),
        AttemptEnd::Internal { pingora_retry } => (false, replay && pingora_retry),
        AttemptEnd::Status {
            status,
            failure_status,
        } => (failure_status, replay && matches!(status, 502..=504)),
    };
    Verdict {
        backend_failed,
        retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_table() {
        use AttemptEnd::*;
        let status = |status, failure_status| Status {
            status,
            failure_status,
        };
        // (end, replayable, response started) -> (backend failed, retry)
        let table: &[(AttemptEnd, bool, bool, bool, bool)] = &[
            (ConnectFailed, false, false, true, true),
            (ConnectFailed, true, false, true, true),
            (StalePooled, true, false, false, true),
            (StalePooled, false, false, false, false),
            (ClientGone, true, false, false, false),
            (UpstreamBroken, true, false, true, true),
            (UpstreamBroken, false, false, true, false),
            (UpstreamBroken, true, true, true, false),
            (
                Internal {
                    pingora_retry: true,
                },
                true,
                false,
                false,
                true,
            ),
            (
                Internal {
                    pingora_retry: false,
                },
                true,
                false,
                false,
                false,
            ),
            (status(503, false), true, false, false, true),
            (status(503, true), true, false, true, true),
            (status(502, false), false, false, false, false),
            (status(504, true), false, false, true, false),
            (status(500, true), true, false, true, false),
            (status(500, false), true, false, false, false),
            (status(200, false), true, false, false, false),
        ];
        for &(end, replayable, started, failed, retry) in table {
            assert_eq!(
                verdict(end, replayable, started),
                Verdict {
                    backend_failed: failed,
                    retry
                },
                "{end:?} replayable={replayable} started={started}"
            );
        }
    }
}
