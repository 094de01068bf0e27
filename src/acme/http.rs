//! The HTTPS client the ACME protocol talks through: hyper's client over rustls (ring, like
//! pingora), HTTP/1.1, trusting `acme.ca_file` or the system's roots, every request bounded.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use pingora_rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;

/// Longest wait for a TCP connection to the CA.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the head of a response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTPS-only client for the ACME directory.
#[derive(Clone)]
pub(super) struct AcmeHttp(Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl AcmeHttp {
    /// A client trusting `ca` (`acme.ca_file`), or the system's roots when `None`.
    pub(super) fn new(ca: Option<&[CertificateDer<'static>]>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        match ca {
            Some(certs) => {
                for cert in certs {
                    roots
                        .add(cert.clone())
                        .map_err(|e| format!("acme.ca_file: a certificate is not usable: {e}"))?;
                }
            }
            None => {
                pingora_rustls::load_platform_certs_incl_env_into_store(&mut roots)
                    .map_err(|e| format!("cannot load the system's CA roots: {e}"))?;
                if roots.is_empty() {
                    return Err(
                        "the system has no CA roots (install ca-certificates, or set \
                                acme.ca_file)"
                            .into(),
                    );
                }
            }
        }
        pingora_rustls::install_default_crypto_provider();
        let tls = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(Self(Client::builder(TokioExecutor::new()).build(https)))
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.0.request(req);
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, response).await {
                Ok(Ok(r)) => Ok(BytesResponse::from(r)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => Err(instant_acme::Error::Other(
                    format!("no response within {}s", REQUEST_TIMEOUT.as_secs()).into(),
                )),
            }
        })
    }
}
