//! [`RunningLoadBalancer`]: a load balancer running on a background thread, for embedders and
//! tests, and the shutdown signal that stops it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};

use super::{remove_blocking, StartError};
use crate::backend::{block_on, BackendServer, BackendSet};
use crate::balance::Balancer;
use crate::config::{ConfigError, LoadBalancerConfig};
use crate::reload::{ReloadError, ReloadReport, Reloader};

/// A shutdown signal fired through a [`tokio::sync::Notify`] (see [`RunningLoadBalancer::stop`]).
pub(super) struct NotifySignal(pub(super) Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for NotifySignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// A load balancer running on a background thread (from [`LoadBalancer::start`]).
pub struct RunningLoadBalancer {
    pub(super) listen: SocketAddr,
    pub(super) admin: SocketAddr,
    pub(super) tls: Option<SocketAddr>,
    pub(super) backends: Arc<BackendSet<Balancer>>,
    pub(super) reloader: Arc<Reloader>,
    pub(super) notify: Arc<tokio::sync::Notify>,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl RunningLoadBalancer {
    /// Where the proxy listens.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Where the admin listener listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Where the TLS listener listens, when TLS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    /// The backends and their live state.
    pub fn backends(&self) -> &Arc<BackendSet<Balancer>> {
        &self.backends
    }

    /// Adds a backend while running; it takes traffic from the next request on.
    pub fn add_server(&self, server: BackendServer) -> Result<(), StartError> {
        block_on(self.backends.add_server(server))??;
        Ok(())
    }

    /// Removes a backend while running: no new requests go to it, and the call waits up to
    /// `wait` for its requests in flight (they finish either way). Returns it if it existed.
    pub fn remove_server(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<Option<BackendServer>, StartError> {
        remove_blocking(&self.backends, id, wait)
    }

    /// Validates `config` and applies it in place, like a SIGHUP reload of a file: backends,
    /// strategy, breaker, retries, rate limit, health check, timeouts (see [`crate::reload`]).
    /// Waits up to the new `shutdown_timeout` for requests in flight on removed backends.
    pub fn reload_config(&self, config: LoadBalancerConfig) -> Result<ReloadReport, ReloadError> {
        block_on(self.reloader.reload_config(config))
            .map_err(|e| ReloadError::Invalid(ConfigError::new(format!("cannot reload: {e}"))))?
    }

    /// Re-reads the configuration file given to [`LoadBalancer::reloading_from`] and applies
    /// it, like SIGHUP.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        block_on(self.reloader.reload())
            .map_err(|e| ReloadError::Invalid(ConfigError::new(format!("cannot reload: {e}"))))?
    }

    /// Stops the server and waits for it to exit.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.notify.notify_one();
            if thread.join().is_err() {
                log::error!("the server thread panicked");
            }
        }
    }
}

impl Drop for RunningLoadBalancer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
