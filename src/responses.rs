//! Responses Fulcrum writes itself, instead of a backend: its error pages, the rate limiter's
//! 429 and the redirect to https. Each is one short line of plain text, carries the request
//! id, and closes the connection (after an error the connection's state is not worth
//! trusting).

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::ratelimit::Decision;
use crate::upstream::Refusal;

/// The status Fulcrum answers for a request that failed with `e`: the status it names, 504 for
/// an upstream timeout, 502 for any other upstream failure, 400 for a malformed request, 500
/// for an internal error, and 0 (nothing to send) when the client connection itself failed.
pub fn status_for(e: &Error) -> u16 {
    match (e.etype(), e.esource()) {
        (ErrorType::HTTPStatus(code), _) => *code,
        (
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ErrorSource::Upstream,
        ) => 504,
        (_, ErrorSource::Upstream) => 502,
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => 0,
        (_, ErrorSource::Downstream) => 400,
        (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
    }
}

/// The text after the status for an error Fulcrum answers itself.
pub fn error_detail(code: u16, refusal: Option<Refusal>) -> &'static str {
    match (code, refusal) {
        (503, Some(r)) => r.detail(),
        (502, _) => "the backend failed to answer",
        (504, _) => "the backend did not answer in time",
        (429, _) => "rate limit exceeded",
        _ => "",
    }
}

/// `503 Service Unavailable: no healthy backend available\n`.
pub fn error_body(code: u16, detail: &str) -> String {
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    if detail.is_empty() {
        format!("{code} {reason}\n")
    } else {
        format!("{code} {reason}: {detail}\n")
    }
}

/// Writes a plain-text response with `extra` headers, then closes the connection.
async fn write_plain(
    session: &mut Session,
    code: u16,
    body: String,
    request_id: Option<&HeaderValue>,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(code, Some(4 + extra.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CONNECTION, "close")?;
    for (name, value) in extra {
        resp.insert_header(*name, value.as_str())?;
    }
    if let Some(id) = request_id {
        resp.insert_header("X-Request-Id", id.clone())?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// An error page (`503`, `502`, `504`, ...); `Retry-After: 1` when every backend is full.
pub async fn write_error(
    session: &mut Session,
    code: u16,
    refusal: Option<Refusal>,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    let body = error_body(code, error_detail(code, refusal));
    let retry_after = [("Retry-After", "1".to_string())];
    let extra: &[(&'static str, String)] = if refusal == Some(Refusal::AllFull) {
        &retry_after
    } else {
        &[]
    };
    write_plain(session, code, body, request_id, extra).await
}

/// `308 Permanent Redirect` to `location` (`redirect_http_to_https`): the method and body are
/// kept by the client, unlike with 301.
pub async fn write_redirect(
    session: &mut Session,
    location: String,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    let body = error_body(308, "");
    write_plain(session, 308, body, request_id, &[("Location", location)]).await
}

/// The rate limiter's `429 Too Many Requests` with `Retry-After` and `X-RateLimit-*`.
pub async fn write_rate_limited(
    session: &mut Session,
    decision: &Decision,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    let extra = [
        ("Retry-After", decision.retry_after.to_string()),
        ("X-RateLimit-Limit", decision.limit.to_string()),
        ("X-RateLimit-Remaining", decision.remaining.to_string()),
    ];
    let body = error_body(429, error_detail(429, None));
    write_plain(session, 429, body, request_id, &extra).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_one_short_line() {
        let cases = [
            (
                503,
                Some(Refusal::NoBackend),
                "503 Service Unavailable: no healthy backend available\n",
            ),
            (
                503,
                Some(Refusal::AllFull),
                "503 Service Unavailable: every backend is at capacity\n",
            ),
            (
                503,
                Some(Refusal::AllOpen),
                "503 Service Unavailable: every backend's circuit breaker is open\n",
            ),
            (502, None, "502 Bad Gateway: the backend failed to answer\n"),
            (
                504,
                None,
                "504 Gateway Timeout: the backend did not answer in time\n",
            ),
            (429, None, "429 Too Many Requests: rate limit exceeded\n"),
            (500, None, "500 Internal Server Error\n"),
        ];
        for (code, refusal, want) in cases {
            assert_eq!(error_body(code, error_detail(code, refusal)), want);
        }
    }

    #[test]
    fn errors_map_to_statuses() {
        let e = |t: ErrorType, s: ErrorSource| match s {
            ErrorSource::Upstream => Error::new_up(t),
            ErrorSource::Downstream => Error::new_down(t),
            _ => Error::new_in(t),
        };
        let cases = [
            (e(ErrorType::HTTPStatus(503), ErrorSource::Internal), 503),
            (e(ErrorType::ReadTimedout, ErrorSource::Upstream), 504),
            (e(ErrorType::ConnectTimedout, ErrorSource::Upstream), 504),
            (e(ErrorType::ConnectRefused, ErrorSource::Upstream), 502),
            (e(ErrorType::ReadError, ErrorSource::Downstream), 0),
            (
                e(ErrorType::InvalidHTTPHeader, ErrorSource::Downstream),
                400,
            ),
            (e(ErrorType::InternalError, ErrorSource::Internal), 500),
        ];
        for (err, want) in cases {
            assert_eq!(status_for(&err), want, "{err}");
        }
    }
}
