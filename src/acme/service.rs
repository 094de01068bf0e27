//! [`AcmeService`]: the background service that keeps the ACME certificate current.
//!
//! Built with the server (before any fork), it loads the stored certificate into the
//! listener's resolver, so serving it needs no network. Once running (after the fork, like
//! every service) it waits for the plain listener, then loops: sleep until a certificate is
//! due (none stored, a domain missing from it, or its renewal time: [`renewal_time`]), order
//! one, store it, load it back from the files and hand it to the resolver. A failure is
//! logged and retried after [`backoff`] (1 min doubling to 1 h); a certificate obtained but
//! not stored is kept and only the storing is retried, so a full disk does not cost the CA's
//! rate limits. Sleeps are cut to 12 h so a suspended machine re-checks its clock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::order::{obtain, Obtained, OrderError};
use super::schedule::{backoff, held, renewal_time, Held};
use super::storage::Storage;
use super::{AcmeSettings, Challenges};
use crate::time::rfc3339;
use crate::tls::{Certificate, SniResolver};

/// Longest single sleep between two looks at the certificate.
const MAX_SLEEP: Duration = Duration::from_secs(12 * 3600);
/// Longest a whole order may take.
const ORDER_LIMIT: Duration = Duration::from_secs(300);
/// Longest wait for the plain listener before the first order.
const LISTENER_WAIT: Duration = Duration::from_secs(30);

/// Obtains and renews the ACME certificate (see the module docs).
pub struct AcmeService {
    settings: AcmeSettings,
    storage: Storage,
    resolver: Arc<SniResolver>,
    challenges: Arc<Challenges>,
    /// The plain listener, where the CA's HTTP-01 requests arrive.
    listen: SocketAddr,
    /// The stored certificate loaded at construction.
    stored: Option<Held>,
}

impl AcmeService {
    /// A service for `settings` that serves through `resolver` and answers challenges through
    /// `challenges` (which the pipeline on `listen` consults). Loads the stored certificate
    /// into `resolver` now, if there is a usable one.
    pub fn new(
        settings: AcmeSettings,
        resolver: Arc<SniResolver>,
        challenges: Arc<Challenges>,
        listen: SocketAddr,
    ) -> Self {
        let first = settings.domains.first().cloned().unwrap_or_default();
        let storage = Storage::new(&settings.storage_dir, &first);
        let mut service = Self {
            settings,
            storage,
            resolver,
            challenges,
            listen,
            stored: None,
        };
        if service.storage.files().cert_file.exists() {
            match service.serve_stored() {
                Ok(held) => service.stored = Some(held),
                Err(e) => log::warn!(
                    "acme: the stored certificate is not usable ({e}); ordering a new one"
                ),
            }
        } else {
            log::info!(
                "acme: no stored certificate for {:?} in {}; ordering one",
                service.settings.domains,
                service.settings.storage_dir.display()
            );
        }
        service
    }

    /// Loads the stored pair and serves it; returns what it holds.
    fn serve_stored(&self) -> Result<Held, String> {
        let files = self.storage.files();
        let cert = Certificate::load(&self.settings.source(), &files)?;
        let chain = self.storage.read_chain().map_err(|e| e.to_string())?;
        let held = held(&chain).ok_or("cannot read the leaf's validity")?;
        self.resolver.set_obtained(cert);
        log::info!(
            "acme: serving {} for {:?}, valid until {}, renewal from {}",
            files.cert_file.display(),
            held.names,
            rfc3339(held.not_after),
            rfc3339(renewal_time(held.not_before, held.not_after))
        );
        Ok(held)
    }

    /// One attempt: order (unless a certificate is already waiting to be stored), store,
    /// serve.
    async fn renew(&self, pending: &mut Option<Obtained>) -> Result<Held, String> {
        if pending.is_none() {
            log::info!(
                "acme: ordering a certificate for {:?} from {}",
                self.settings.domains,
                self.settings.directory_url
            );
            let order = obtain(&self.settings, &self.storage, &self.challenges);
            let obtained = tokio::time::timeout(ORDER_LIMIT, order)
                .await
                .map_err(|_| format!("the order took over {}s", ORDER_LIMIT.as_secs()))?
                .map_err(|e: OrderError| e.to_string())?;
            *pending = Some(obtained);
        }
        if let Some(o) = pending.as_ref() {
            self.storage
                .store_certificate(&o.chain_pem, &o.key_pem)
                .map_err(|e| {
                    format!(
                        "cannot store the certificate in {}: {e}",
                        self.settings.storage_dir.display()
                    )
                })?;
        }
        *pending = None;
        log::info!(
            "acme: certificate stored in {}",
            self.storage.files().cert_file.display()
        );
        self.serve_stored()
    }

    /// Waits (bounded) until the plain listener accepts connections.
    async fn wait_for_listener(&self) {
        let target = match self.listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.listen.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), self.listen.port())
            }
            _ => self.listen,
        };
        let deadline = tokio::time::Instant::now() + LISTENER_WAIT;
        while tokio::net::TcpStream::connect(target).await.is_err() {
            if tokio::time::Instant::now() >= deadline {
                log::warn!("acme: the plain listener {target} does not accept connections yet; ordering anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut held = self.stored.clone();
        let mut pending = None;
        let mut failures = 0u32;
        let mut waited_for_listener = false;
        loop {
            let due = match (&held, failures) {
                (_, 1..) => backoff(failures),
                (None, 0) => Duration::ZERO,
                (Some(h), 0) => h.due_in(&self.settings.domains, SystemTime::now()),
            };
            if !due.is_zero() && failures == 0 {
                log::debug!(
                    "acme: next look at the certificate in {}",
                    humantime::format_duration(Duration::from_secs(due.min(MAX_SLEEP).as_secs()))
                );
            }
            tokio::select! {
                () = tokio::time::sleep(due.min(MAX_SLEEP)) => {}
                _ = shutdown.changed() => return,
            }
            if due > MAX_SLEEP {
                continue; // not due yet: look again
            }
            if !waited_for_listener {
                self.wait_for_listener().await;
                waited_for_listener = true;
            }
            let outcome = tokio::select! {
                r = self.renew(&mut pending) => r,
                _ = shutdown.changed() => return,
            };
            match outcome {
                Ok(h) => {
                    held = Some(h);
                    failures = 0;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    log::warn!(
                        "acme: attempt {failures} for {:?} failed: {e}; next attempt in {}",
                        self.settings.domains,
                        humantime::format_duration(backoff(failures))
                    );
                }
            }
        }
    }
}
