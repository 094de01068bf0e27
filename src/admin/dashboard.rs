//! The live dashboard: one self-contained page (no CDN), embedded in the binary.
//!
//! (Skeleton; the page lands in a later commit.)

use http::{HeaderValue, Response};

/// The dashboard page.
pub fn page() -> Response<Vec<u8>> {
    let mut resp = Response::new(b"<!doctype html><title>Fulcrum</title>".to_vec());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}
