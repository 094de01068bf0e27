//! Client-connection hygiene for HTTP/1: how long a client may take to send a request head, how
//! long it may sit idle between requests, and how large a head may be.
//!
//! Pingora reads the request head with a timeout per read, so a client that trickles one byte
//! at a time (slowloris) can hold a connection forever, and it accepts heads up to 1 MiB.
//! [`GuardedApp`] wraps the proxy application and reads each HTTP/1 request head itself first:
//!
//! - waiting for the first byte of a request is bounded by `client_idle_timeout` (a connection
//!   that sends nothing is closed);
//! - from the first byte, the complete head must arrive within `client_header_timeout`, else the
//!   client gets `408 Request Timeout` and the connection is closed;
//! - a head larger than `max_request_header_size` gets `431 Request Header Fields Too Large`;
//! - a head whose framing a backend could read differently from pingora gets 400 or 501
//!   ([`framing`]: control bytes in the target, `Host`, `Content-Length`, `Transfer-Encoding`;
//!   header names with `_` are dropped).
//!
//! Every refusal has a short plain-text body saying what is wrong and closes the connection;
//! the request never reaches the proxy. The bytes read are handed to pingora's parser (as the
//! session's pipelined prefix), unchanged unless [`framing`] collapsed or dropped a field, so
//! nothing is copied on the common path. HTTP/2 sessions pass straight through.
//!
//! [`CountedApp`] counts open client connections for the metrics. With `h2c` on, it also bounds
//! the wait for a new connection's first 24 bytes (the length of the HTTP/2 preface, which
//! pingora reads before anything else to tell h2c from HTTP/1.1) by `client_header_timeout`;
//! without that bound a client sending fewer bytes would hold the connection forever.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::drain::OpenConnections;
use crate::metrics::Metrics;

pub mod framing;

/// Limits on what clients send (from the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// From the first byte of a request head to its end (`client_header_timeout`).
    pub header_timeout: Duration,
    /// Waiting for the first byte of a request (`client_idle_timeout`).
    pub idle_timeout: Duration,
    /// Largest request head in bytes (`max_request_header_size`).
    pub max_header_size: usize,
    /// Keep header fields whose names contain `_` (`underscores_in_headers`); by default they
    /// are dropped.
    pub underscores_in_headers: bool,
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// The head did not complete in time: answer 408.
    TooSlow,
    /// The head is too large: answer 431.
    TooLarge,
    /// The client went away or nothing arrived while idle: just close.
    Gone,
}

/// Where the head ends (the index after its blank line), ignoring leading blank lines.
fn head_end(buf: &[u8]) -> Option<usize> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let body = &buf[start..];
    let mut i = 0;
    while let Some(p) = body[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        // "\n\n" or "\n\r\n" ends the head
        match body.get(nl + 1) {
            Some(b'\n') => return Some(start + nl + 2),
            Some(b'\r') if body.get(nl + 2) == Some(&b'\n') => return Some(start + nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// [`head_end`] for a buffer whose first `from` bytes are known to hold no terminator and no
/// leading blank lines only (so the head has started before `from`).
fn head_end_from(buf: &[u8], from: usize) -> Option<usize> {
    if buf[..from].iter().all(|&b| b == b'\r' || b == b'\n') {
        return head_end(buf); // still in leading blank lines
    }
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Reads one request head (and whatever follows it in the same reads); returns the bytes and
/// where the head ends in them.
async fn read_head(
    stream: &mut Stream,
    limits: &ClientLimits,
    shutdown: &mut ShutdownWatch,
) -> Result<(BytesMut, usize), HeadError> {
    let mut buf = BytesMut::with_capacity(4096);
    let first = tokio::select! {
        biased;
        r = tokio::time::timeout(limits.idle_timeout, stream.read_buf(&mut buf)) => r,
        _ = shutdown.changed() => return Err(HeadError::Gone),
    };
    match first {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Err(HeadError::Gone),
    }
    let deadline = tokio::time::Instant::now() + limits.header_timeout;
    let mut scanned = 0;
    loop {
        // Only the new bytes (and the 3 before them, for a terminator split across reads) are
        // scanned, so a client sending one byte at a time costs linear, not quadratic, work.
        let end = if scanned == 0 {
            head_end(&buf)
        } else {
            let from = scanned - 3;
            head_end_from(&buf, from)
        };
        scanned = buf.len().max(3);
        match end {
            Some(end) if end > limits.max_header_size => return Err(HeadError::TooLarge),
            Some(end) => return Ok((buf, end)),
            None => {}
        }
        if buf.len() > limits.max_header_size {
            return Err(HeadError::TooLarge);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(HeadError::Gone),
            Err(_) => return Err(HeadError::TooSlow),
        }
    }
}

/// Answers a request that never made it to the proxy, and closes: `status` is the status
/// line's code and reason, `detail` (if any) says what was wrong.
async fn refuse(stream: &mut Stream, status: &str, detail: Option<&str>) {
    let body = match detail {
        Some(detail) => format!("{status}: {detail}\n"),
        None => format!("{status}\n"),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(resp.as_bytes()).await.is_ok() {
        let _ = stream.flush().await;
    }
}

/// The proxy application behind client limits.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    limits: ClientLimits,
}

impl<A> GuardedApp<A> {
    /// Wraps `inner`.
    pub fn new(inner: A, limits: ClientLimits) -> Self {
        Self {
            inner: Arc::new(inner),
            limits,
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for GuardedApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let ServerSession::H1(h1) = session else {
            return self.inner.process_new_http(session, shutdown).await;
        };
        let mut stream = h1.into_inner();
        let mut watch = shutdown.clone();
        let head = match read_head(&mut stream, &self.limits, &mut watch).await {
            Ok((mut head, end)) => {
                let framed = framing::check(&mut head, end, self.limits.underscores_in_headers);
                if let Err(refusal) = framed {
                    refuse(&mut stream, refusal.status(), Some(refusal.reason())).await;
                    return None;
                }
                head
            }
            Err(HeadError::TooSlow) => {
                refuse(&mut stream, "408 Request Timeout", None).await;
                return None;
            }
            Err(HeadError::TooLarge) => {
                refuse(&mut stream, "431 Request Header Fields Too Large", None).await;
                return None;
            }
            Err(HeadError::Gone) => return None,
        };
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(self.limits.idle_timeout.as_secs().max(1))
        });
        session.set_pipelined_prefix(head);
        self.inner.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

/// Counts open client connections around an application: pingora calls `process_new` once per
/// connection and keeps kept-alive requests inside it.
pub struct CountedApp<A> {
    inner: Arc<A>,
    metrics: Arc<Metrics>,
    open: Arc<OpenConnections>,
    /// With h2c: how long a plain connection may take to send its first 24 bytes.
    preface_deadline: Option<Duration>,
}

impl<A> CountedApp<A> {
    /// Wraps `inner`, counting into the metrics and into `open` (which the graceful drain
    /// watches, whether or not metrics are on).
    pub fn new(inner: A, metrics: Arc<Metrics>, open: Arc<OpenConnections>) -> Self {
        Self {
            inner: Arc::new(inner),
            metrics,
            open,
            preface_deadline: None,
        }
    }

    /// A plain connection must send its first 24 bytes within `limit` (set with h2c).
    pub fn with_preface_deadline(mut self, limit: Duration) -> Self {
        self.preface_deadline = Some(limit);
        self
    }
}

/// Length of the HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE_LEN: usize = 24;

/// Marks a connection closed when dropped, however its task ends.
struct OpenConnection<'a, A>(&'a CountedApp<A>);

impl<A> Drop for OpenConnection<'_, A> {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
        self.0.open.closed();
    }
}

#[async_trait]
impl<A> ServerApp for CountedApp<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.metrics.connection_opened();
        self.open.opened();
        let _open = OpenConnection(&**self);
        if let Some(limit) = self.preface_deadline {
            if stream.get_ssl_digest().is_none() {
                let mut first = [0u8; H2_PREFACE_LEN];
                // peeked bytes are put back for pingora's own look at them
                match tokio::time::timeout(limit, stream.try_peek(&mut first)).await {
                    Ok(Ok(_)) => {}
                    _ => return None,
                }
            }
        }
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_a_head() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Some(27)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY", Some(27)),
            (b"GET / HTTP/1.1\nHost: a\n\n", Some(24)),
            (b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", Some(22)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", None),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r", None),
            (b"\r\n\r\n", None),
            (b"", None),
        ];
        for (buf, want) in cases {
            assert_eq!(head_end(buf), *want, "{:?}", String::from_utf8_lossy(buf));
        }
        // resuming the scan gives the same answer wherever the previous read ended
        let full = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nBODY";
        for cut in 3..full.len() {
            let got = head_end(&full[..cut]).or_else(|| head_end_from(full, cut - 3));
            assert_eq!(got, Some(33), "cut at {cut}");
        }
    }
}
