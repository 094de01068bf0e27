//! Helpers for the metrics tests: backends on fixed ports, a [`RequestRecord`] from a status and
//! a duration, and one sample read back from the text exposition.

use std::sync::Arc;
use std::time::Duration;

use super::RequestRecord;
use crate::backend::{BackendServer, BackendState};

/// A backend `id` at `http://127.0.0.1:{port}`.
pub fn backend(id: &str, port: u16) -> Arc<BackendState> {
    BackendState::validated(BackendServer::new(id, format!("http://127.0.0.1:{port}"))).unwrap()
}

/// A request that took `ms` in total and half that upstream (when it had a backend).
pub fn request<'a>(
    status: u16,
    ms: u64,
    backend: Option<&'a Arc<BackendState>>,
) -> RequestRecord<'a> {
    RequestRecord {
        status,
        total: Duration::from_millis(ms),
        upstream: backend.map(|_| Duration::from_millis(ms / 2)),
        backend,
        attempts: u32::from(backend.is_some()),
    }
}

/// The value of the sample whose name and labels are exactly `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
