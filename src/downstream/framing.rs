//! Request framing rules, checked on the raw HTTP/1 head before pingora parses it, so that the
//! backend (a second parser) never reads a request differently from Fulcrum.
//!
//! - The request line must hold no control byte (NUL, CR, TAB, ... DEL): pingora would
//!   percent-encode them and forward a different target. 400, as nginx and HAProxy answer.
//! - An HTTP/1.1 request needs exactly one `Host` (RFC 9112 §3.2), any request at most one. 400.
//! - `Content-Length`: every value in every field must be the same decimal number (RFC 9110
//!   §8.6), else 400; duplicates and lists (`5, 5`) are collapsed to one field for the backend.
//! - `Transfer-Encoding`: not in HTTP/1.0, and `chunked` exactly once and last (RFC 9112 §6.1,
//!   §6.3), else 400; any other coding (`gzip, chunked`) is 501, because pingora would forward
//!   the body as plain `chunked` with the coding dropped and not decoded.
//! - Header names with `_` are dropped (as nginx does: a backend framework may read
//!   `Content_Length` as `Content-Length`), unless `underscores_in_headers` keeps them.
//!
//! The header fields are parsed with the same parser and limits pingora uses (httparse,
//! default settings, 256 fields), so both agree on which fields there are; a head httparse
//! rejects is left to pingora, which refuses it. Nothing is allocated unless the head has to
//! be rewritten (duplicates collapsed or fields dropped).

use std::fmt::Write;

use bytes::BytesMut;

/// Header fields pingora parses per request (its `MAX_HEADERS`).
const MAX_HEADERS: usize = 256;
/// Header fields parsed without the full array.
const FEW_HEADERS: usize = 32;

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A control byte in the request line.
    ControlInTarget,
    /// An HTTP/1.1 request without `Host`.
    MissingHost,
    /// More than one `Host` field.
    DuplicateHost,
    /// A `Content-Length` value that is not a number, or values that differ.
    BadContentLength,
    /// `Transfer-Encoding` in a request that is not HTTP/1.1.
    TransferEncodingVersion,
    /// `Transfer-Encoding` whose last coding is not `chunked`, or that lists it twice.
    ChunkedNotOnceLast,
    /// A transfer coding other than `chunked`.
    UnsupportedCoding,
}

impl Refusal {
    /// The status line's code and reason.
    pub fn status(self) -> &'static str {
        match self {
            Self::UnsupportedCoding => "501 Not Implemented",
            _ => "400 Bad Request",
        }
    }

    /// What is wrong, naming the header or part of the request.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ControlInTarget => "control character in the request target",
            Self::MissingHost => "HTTP/1.1 request without a Host header",
            Self::DuplicateHost => "more than one Host header",
            Self::BadContentLength => "invalid or conflicting Content-Length",
            Self::TransferEncodingVersion => "Transfer-Encoding in an HTTP/1.0 request",
            Self::ChunkedNotOnceLast => "Transfer-Encoding must list chunked once, last",
            Self::UnsupportedCoding => "Transfer-Encoding other than chunked is not supported",
        }
    }
}

/// Checks the request head in `buf[..head_end]` (the rest of `buf` is body or a next request)
/// and rewrites it in place when fields are collapsed or dropped.
pub fn check(buf: &mut BytesMut, head_end: usize, keep_underscores: bool) -> Result<(), Refusal> {
    let Some(start) = buf[..head_end]
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
    else {
        return Ok(());
    };
    let Some(line_len) = buf[start..head_end].iter().position(|&b| b == b'\n') else {
        return Ok(());
    };
    let fields_at = start + line_len + 1;
    let line = &buf[start..start + line_len];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(Refusal::ControlInTarget);
    }
    let http11 = line.ends_with(b" HTTP/1.1");

    // Most heads have few fields: parse into a small array first, the full one only when it
    // overflows (initialising 256 empty fields costs more than scanning a typical head).
    let block = &buf[fields_at..head_end];
    let mut small = [httparse::EMPTY_HEADER; FEW_HEADERS];
    let mut all;
    let fields = match httparse::parse_headers(block, &mut small) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Err(httparse::Error::TooManyHeaders) => {
            all = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(block, &mut all) {
                Ok(httparse::Status::Complete((_, fields))) => fields,
                _ => return Ok(()), // pingora's parser refuses the same bytes
            }
        }
        _ => return Ok(()),
    };
    let found = Fields::scan(fields)?;
    if found.hosts > 1 {
        return Err(Refusal::DuplicateHost);
    }
    if found.hosts == 0 && http11 {
        return Err(Refusal::MissingHost);
    }
    let collapse = match found.codings {
        Some(codings) => {
            codings.verdict(http11)?;
            false // pingora removes Content-Length when Transfer-Encoding is present
        }
        None => found.length.is_some() && found.length_values > 1,
    };
    let drop_underscores = found.underscores && !keep_underscores;
    if !collapse && !drop_underscores {
        return Ok(());
    }
    let rewritten = rewrite(
        buf,
        fields_at,
        fields,
        collapse,
        drop_underscores,
        found.length,
    );
    *buf = rewritten;
    Ok(())
}

/// What the header fields say about framing.
#[derive(Debug, Default)]
struct Fields {
    hosts: usize,
    /// The `Content-Length` value, when every value agrees.
    length: Option<u64>,
    /// How many `Content-Length` values there are, over all fields and lists.
    length_values: usize,
    codings: Option<Codings>,
    underscores: bool,
}

impl Fields {
    fn scan(fields: &[httparse::Header<'_>]) -> Result<Self, Refusal> {
        let mut found = Self::default();
        for field in fields {
            let name = field.name.as_bytes();
            if name.eq_ignore_ascii_case(b"host") {
                found.hosts += 1;
            } else if name.eq_ignore_ascii_case(b"content-length") {
                for value in list(field.value) {
                    let n = decimal(value).ok_or(Refusal::BadContentLength)?;
                    if found.length.is_some_and(|seen| seen != n) {
                        return Err(Refusal::BadContentLength);
                    }
                    found.length = Some(n);
                    found.length_values += 1;
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let codings = found.codings.get_or_insert_with(Codings::default);
                for coding in list(field.value).filter(|c| !c.is_empty()) {
                    codings.add(coding);
                }
            } else if name.contains(&b'_') {
                found.underscores = true;
            }
        }
        Ok(found)
    }
}

/// The transfer codings of a request, in order.
#[derive(Debug, Default, Clone, Copy)]
struct Codings {
    chunked: usize,
    others: usize,
    last_is_chunked: bool,
}

impl Codings {
    fn add(&mut self, coding: &[u8]) {
        self.last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
        if self.last_is_chunked {
            self.chunked += 1;
        } else {
            self.others += 1;
        }
    }

    fn verdict(self, http11: bool) -> Result<(), Refusal> {
        if !http11 {
            Err(Refusal::TransferEncodingVersion)
        } else if !self.last_is_chunked || self.chunked > 1 {
            Err(Refusal::ChunkedNotOnceLast)
        } else if self.others > 0 {
            Err(Refusal::UnsupportedCoding)
        } else {
            Ok(())
        }
    }
}

/// The elements of a comma-separated field value, without surrounding whitespace.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|v| v.trim_ascii_start().trim_ascii_end())
}

/// A non-empty run of ASCII digits, as a number that fits in a `u64`.
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The head with `Content-Length` collapsed to one field and/or fields named with `_`
/// dropped; everything else byte for byte.
fn rewrite(
    buf: &BytesMut,
    fields_at: usize,
    fields: &[httparse::Header<'_>],
    collapse: bool,
    drop_underscores: bool,
    length: Option<u64>,
) -> BytesMut {
    let base = buf.as_ptr() as usize;
    let mut out = BytesMut::with_capacity(buf.len());
    out.extend_from_slice(&buf[..fields_at]);
    let mut at = fields_at;
    let mut length_written = false;
    for field in fields {
        // each field is one line (httparse refuses folded lines by default)
        let line_start = field.name.as_ptr() as usize - base;
        let line_end = buf[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |p| line_start + p + 1);
        let name = field.name.as_bytes();
        let dropped = drop_underscores && name.contains(&b'_');
        let is_length = collapse && name.eq_ignore_ascii_case(b"content-length");
        if is_length && !length_written {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            let _ = write!(out, "{}\r\n", length.unwrap_or(0));
            length_written = true;
        } else if !dropped && !is_length {
            out.extend_from_slice(&buf[line_start..line_end]);
        }
        at = line_end;
    }
    out.extend_from_slice(&buf[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(head: &str, keep_underscores: bool) -> Result<String, Refusal> {
        let mut buf = BytesMut::from(head.as_bytes());
        let end = head.find("\r\n\r\n").map_or(head.len(), |i| i + 4);
        check(&mut buf, end, keep_underscores)?;
        Ok(String::from_utf8(buf.to_vec()).unwrap())
    }

    #[test]
    fn refusals() {
        use Refusal::*;
        let cases = [
            ("GET /a\0 HTTP/1.1\r\nHost: a\r\n\r\n", ControlInTarget),
            ("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", ControlInTarget),
            ("GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n", ControlInTarget),
            ("\r\nGET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", ControlInTarget),
            ("GET / HTTP/1.1\r\n\r\n", MissingHost),
            ("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", DuplicateHost),
            ("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", DuplicateHost),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n", BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,\r\n\r\n", BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1,2\r\n\r\n", BadContentLength),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncodingVersion),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", ChunkedNotOnceLast),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", ChunkedNotOnceLast),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", ChunkedNotOnceLast),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnsupportedCoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: Chunked\r\n\r\n", UnsupportedCoding),
        ];
        for (head, want) in cases {
            assert_eq!(run(head, false), Err(want), "{head:?}");
        }
        let fields: String = (0..40).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{fields}Host: a\r\nHost: b\r\n\r\n");
        assert_eq!(
            run(&many, false),
            Err(DuplicateHost),
            "past the small array"
        );
        let fields: String = (0..300).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let too_many = format!("GET / HTTP/1.1\r\n{fields}\r\n");
        let left = run(&too_many, false);
        assert_eq!(left, Ok(too_many), "left to pingora, which refuses it");
        assert_eq!(Refusal::UnsupportedCoding.status(), "501 Not Implemented");
        assert_eq!(Refusal::MissingHost.status(), "400 Bad Request");
    }

    #[test]
    fn accepted_heads_are_untouched_or_rewritten() {
        let fields: String = (0..40).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let many_fields = format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
        let cases = [
            // untouched
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", "GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"),
            ("GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.0\r\n\r\n"),
            ("GET /a%00 HTTP/1.1\r\nHost: a\r\n\r\n", "GET /a%00 HTTP/1.1\r\nHost: a\r\n\r\n"),
            // pingora drops Content-Length when Transfer-Encoding is present
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\nContent-Length: 1, 1\r\n\r\n",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\nContent-Length: 1, 1\r\n\r\n",
            ),
            // more fields than the small array holds
            (&many_fields, &many_fields),
            // a head httparse refuses is left to pingora
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", "GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            // collapsed
            (
                "POST / HTTP/1.1\r\ncontent-length: 3\r\nHost: a\r\nContent-Length: 3 ,3\r\n\r\nabc",
                "POST / HTTP/1.1\r\ncontent-length: 3\r\nHost: a\r\n\r\nabc",
            ),
            // dropped, bare LF line ends kept
            (
                "GET / HTTP/1.1\nHost: a\nX_A: 1\nContent_Length: 9\nX-B: 2\n\r\n",
                "GET / HTTP/1.1\nHost: a\nX-B: 2\n\r\n",
            ),
        ];
        for (head, want) in cases {
            assert_eq!(run(head, false).as_deref(), Ok(want), "{head:?}");
        }
        let kept = "GET / HTTP/1.1\r\nHost: a\r\nX_A: 1\r\n\r\n";
        assert_eq!(run(kept, true).as_deref(), Ok(kept));
    }
}
