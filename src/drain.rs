//! Graceful stop that ends when the work does: after SIGTERM (or the old process's side of an
//! upgrade) Fulcrum exits as soon as its last client connection has closed, or at
//! `shutdown_timeout`, instead of sleeping through pingora's fixed grace period.
//!
//! Three parts: [`OpenConnections`], counted around every client connection (independent of
//! `metrics_enabled`); [`DrainingSignal`], which wraps the shutdown signal and remembers whether
//! the stop is graceful; and [`DrainService`], a pingora background service that, once pingora
//! broadcasts the shutdown (listeners closed, idle kept-alive connections told to go), waits
//! for the open connections to reach zero, lets the access log write what it holds, and exits
//! the process. It is only installed by the binary's run (see
//! [`LoadBalancer::exit_when_drained`](crate::server::LoadBalancer::exit_when_drained)): an
//! embedder's process is never exited behind its back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;

use crate::access_log::AccessLog;

/// Client connections open right now.
#[derive(Debug, Default)]
pub struct OpenConnections(AtomicU64);

impl OpenConnections {
    /// One more connection.
    pub fn opened(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// One fewer.
    pub fn closed(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// How many are open.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Wraps a shutdown signal and notes whether the stop it gives is graceful (terminate or
/// upgrade) rather than fast.
pub struct DrainingSignal {
    inner: Box<dyn ShutdownSignalWatch + Send + Sync>,
    graceful: Arc<AtomicBool>,
}

impl DrainingSignal {
    /// `inner`, noting a graceful stop in `graceful`.
    pub fn new(
        inner: Box<dyn ShutdownSignalWatch + Send + Sync>,
        graceful: Arc<AtomicBool>,
    ) -> Self {
        Self { inner, graceful }
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignal {
    async fn recv(&self) -> ShutdownSignal {
        let signal = self.inner.recv().await;
        let graceful = matches!(
            signal,
            ShutdownSignal::GracefulTerminate | ShutdownSignal::GracefulUpgrade
        );
        self.graceful.store(graceful, Ordering::Release);
        signal
    }
}

/// Whether the drain is over: nothing open, or out of time.
pub fn drained(open: u64, now: Instant, deadline: Instant) -> bool {
    open == 0 || now >= deadline
}

/// The background service that ends the process once a graceful stop has drained (see the
/// module docs).
pub struct DrainService {
    /// Connections counted around the proxy.
    pub open: Arc<OpenConnections>,
    /// Set by [`DrainingSignal`] when the stop is graceful.
    pub graceful: Arc<AtomicBool>,
    /// Longest wait for the connections (`shutdown_timeout`).
    pub limit: Duration,
    /// The access log, given a moment to write what it holds before the exit.
    pub access_log: Option<Arc<AccessLog>>,
}

/// How often the drain looks at the open connections.
const POLL: Duration = Duration::from_millis(10);
/// Longest wait for the access log to write its queue before the exit.
const LOG_FLUSH: Duration = Duration::from_secs(1);

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() || !self.graceful.load(Ordering::Acquire) {
            return; // the server went away, or stops fast: pingora ends it
        }
        let started = Instant::now();
        let deadline = started + self.limit;
        while !drained(self.open.get(), Instant::now(), deadline) {
            tokio::time::sleep(POLL).await;
        }
        let left = self.open.get();
        if let Some(log) = &self.access_log {
            log.wait_written(LOG_FLUSH).await;
        }
        if left == 0 {
            log::info!("drained in {} ms; exiting", started.elapsed().as_millis());
        } else {
            log::warn!(
                "shutdown_timeout ({:?}) reached with {left} client connections open; exiting",
                self.limit
            );
        }
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_when_empty_or_out_of_time() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(5);
        // (open, at) -> drained
        let table = [
            (0, t0, true),
            (3, t0, false),
            (3, t0 + Duration::from_secs(4), false),
            (3, deadline, true),
            (0, deadline + Duration::from_secs(1), true),
        ];
        for (open, at, want) in table {
            assert_eq!(drained(open, at, deadline), want, "{open} open");
        }
    }

    #[test]
    fn counts_connections() {
        let c = OpenConnections::default();
        c.opened();
        c.opened();
        c.closed();
        assert_eq!(c.get(), 1);
    }
}
