//! HTTPS and HTTP/2 test backends: certificates made with rcgen ([`TestPki`]) and
//! [`TestServer`], a backend on 127.0.0.1:0 that speaks HTTP/1.1 or HTTP/2, over TLS (rustls,
//! through pingora's re-export) or in cleartext (h2c, prior knowledge), and records what it saw:
//! TLS handshakes (SNI, ALPN), connections, requests and the most streams in flight at once on
//! one connection. `GET /health` answers 200 or 503 ([`TestServer::set_healthy`]); any other
//! path answers `200 Response from <id>`, `/trailers` (HTTP/2 only) with a `grpc-status: 0`
//! trailer after the body.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora_core::tls::{CertificateDer, PrivateKeyDer, ServerConfig, TlsAcceptor};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A test CA (its PEM in a file, for `ca_file`) and a server certificate it signed for
/// `127.0.0.1` and `localhost`; or, from [`TestPki::self_signed`], a certificate no CA signed.
pub struct TestPki {
    /// The CA certificate's PEM file.
    pub ca_file: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl TestPki {
    /// A CA and a server certificate it signed; the CA's PEM goes to `$TMPDIR`.
    pub fn new(name: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("Fulcrum test CA {name}"));
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = server_params().signed_by(&key, &ca, &ca_key).unwrap();
        let ca_file =
            std::env::temp_dir().join(format!("fulcrum-test-{}-{name}-ca.pem", std::process::id()));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Self {
            ca_file,
            chain: vec![leaf.der().clone()],
            key: key.serialize_der(),
        }
    }

    /// A self-signed server certificate for `127.0.0.1` and `localhost`; its `ca_file` is the
    /// certificate itself.
    pub fn self_signed(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let cert = server_params().self_signed(&key).unwrap();
        let ca_file = std::env::temp_dir().join(format!(
            "fulcrum-test-{}-{name}-self.pem",
            std::process::id()
        ));
        std::fs::write(&ca_file, cert.pem()).unwrap();
        Self {
            ca_file,
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    }

    fn server_config(&self, alpn: &[&[u8]]) -> ServerConfig {
        pingora_core::tls::install_default_crypto_provider();
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone().into()),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

fn server_params() -> CertificateParams {
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "fulcrum test backend");
    params
}

/// One TLS handshake the server completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The SNI the client sent (none for an IP address).
    pub sni: Option<String>,
    /// The protocol ALPN settled on.
    pub alpn: Option<String>,
}

/// One request the server read.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Which connection (numbered from 0 in accept order).
    pub conn: usize,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The path.
    pub path: String,
    /// The `te` header, if any.
    pub te: Option<String>,
}

#[derive(Default)]
struct Shared {
    unhealthy: AtomicBool,
    /// Requests other than `/health` wait until this many are in flight, then all go on and
    /// it is reset to 0 (no wait); 5 s at most.
    hold_until: AtomicUsize,
    in_flight: AtomicUsize,
    connections: AtomicUsize,
    handshakes: Mutex<Vec<Handshake>>,
    requests: Mutex<Vec<SeenRequest>>,
    /// Per connection: streams in flight now, and the most at once.
    streams: Mutex<HashMap<usize, (usize, usize)>>,
}

/// How a [`TestServer`] talks.
#[derive(Clone)]
enum Mode {
    /// TLS, then HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
    Tls(TlsAcceptor),
    /// Cleartext HTTP/1.1.
    Plain,
    /// Cleartext prior-knowledge HTTP/2.
    H2c,
}

/// A test backend; stops when dropped.
pub struct TestServer {
    id: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// An https backend with `pki`'s certificate, offering `alpn` (e.g. `[b"h2", b"http/1.1"]`).
    pub fn https(id: &str, pki: &TestPki, alpn: &[&[u8]]) -> Self {
        let acceptor = TlsAcceptor::from(Arc::new(pki.server_config(alpn)));
        Self::start(id, Mode::Tls(acceptor))
    }

    /// A cleartext HTTP/1.1 backend (to point an https URL at).
    pub fn plain(id: &str) -> Self {
        Self::start(id, Mode::Plain)
    }

    /// A cleartext prior-knowledge HTTP/2 (h2c) backend.
    pub fn h2c(id: &str) -> Self {
        Self::start(id, Mode::H2c)
    }

    fn start(id: &str, mode: Mode) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(tokio::sync::Notify::new());
        let (s, st, name) = (shared.clone(), stop.clone(), id.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let conn = s.connections.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(serve(tcp, conn, mode.clone(), s.clone(), name.clone()));
                        }
                        () = st.notified() => break,
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Self {
            id: id.to_string(),
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// Its id (in its answers).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `scheme://host:port` for this server.
    pub fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}", self.addr.port())
    }

    /// `GET /health` answers 200 (true) or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// The next requests other than `/health` wait until `n` of them are in flight (5 s at
    /// most), then all are answered.
    pub fn hold_until(&self, n: usize) {
        self.shared.hold_until.store(n, Ordering::SeqCst);
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.shared.handshakes.lock().unwrap().clone()
    }

    /// Requests read.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Connections that carried a request other than `/health` (the proxy's, not the health
    /// checks').
    pub fn proxy_connections(&self) -> Vec<usize> {
        let mut conns: Vec<usize> = self
            .requests()
            .iter()
            .filter(|r| r.path != "/health")
            .map(|r| r.conn)
            .collect();
        conns.sort_unstable();
        conns.dedup();
        conns
    }

    /// The most requests other than `/health` in flight at once on one connection.
    pub fn max_streams_on_one_connection(&self) -> usize {
        let streams = self.shared.streams.lock().unwrap();
        streams.values().map(|(_, max)| *max).max().unwrap_or(0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(tcp: tokio::net::TcpStream, conn: usize, mode: Mode, s: Arc<Shared>, id: String) {
    match mode {
        Mode::Plain => serve_h1(tcp, conn, &s, &id).await,
        Mode::H2c => serve_h2(tcp, conn, s, id).await,
        Mode::Tls(acceptor) => {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
            else {
                return; // refused by the client (unverified certificate) or not TLS
            };
            let session = tls.get_ref().1;
            let handshake = Handshake {
                sni: session.server_name().map(str::to_string),
                alpn: session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
            };
            let h2 = handshake.alpn.as_deref() == Some("h2");
            s.handshakes.lock().unwrap().push(handshake);
            if h2 {
                serve_h2(tls, conn, s, id).await
            } else {
                serve_h1(tls, conn, &s, &id).await
            }
        }
    }
}

/// Status and body for `path`.
fn answer(s: &Shared, id: &str, path: &str) -> (u16, String) {
    if path == "/health" && s.unhealthy.load(Ordering::SeqCst) {
        (503, "unhealthy".into())
    } else {
        (200, format!("Response from {id}"))
    }
}

/// One HTTP/1.1 request, answered with `Connection: close`.
async fn serve_h1<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, conn: usize, s: &Shared, id: &str) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split(' ').nth(1).unwrap_or("/").to_string();
    let te = text
        .lines()
        .find_map(|l| l.strip_prefix("te:").or_else(|| l.strip_prefix("TE:")))
        .map(|v| v.trim().to_string());
    s.requests.lock().unwrap().push(SeenRequest {
        conn,
        version: "HTTP/1.1".into(),
        path: path.clone(),
        te,
    });
    let (status, body) = answer(s, id, &path);
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = io.write_all(resp.as_bytes()).await;
    let _ = io.shutdown().await;
}

/// HTTP/2 until the client goes away: every stream is answered on its own task.
async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    conn: usize,
    s: Arc<Shared>,
    id: String,
) {
    let Ok(mut h2) = h2::server::Builder::new()
        .max_concurrent_streams(1000)
        .handshake::<_, Bytes>(io)
        .await
    else {
        return;
    };
    while let Some(Ok((req, respond))) = h2.accept().await {
        tokio::spawn(answer_h2(req, respond, conn, s.clone(), id.clone()));
    }
}

async fn answer_h2(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    conn: usize,
    s: Arc<Shared>,
    id: String,
) {
    let path = req.uri().path().to_string();
    s.requests.lock().unwrap().push(SeenRequest {
        conn,
        version: format!("{:?}", req.version()),
        path: path.clone(),
        te: req
            .headers()
            .get("te")
            .map(|v| v.to_str().unwrap_or("").to_string()),
    });
    let counted = path != "/health";
    if counted {
        s.in_flight.fetch_add(1, Ordering::SeqCst);
        {
            let mut streams = s.streams.lock().unwrap();
            let (now, max) = streams.entry(conn).or_default();
            *now += 1;
            *max = (*max).max(*now);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let hold = s.hold_until.load(Ordering::SeqCst);
            if s.in_flight.load(Ordering::SeqCst) >= hold {
                s.hold_until.store(0, Ordering::SeqCst); // the gate opens for every waiter
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (status, body) = answer(&s, &id, &path);
    let trailers = path == "/trailers";
    let resp = http::Response::builder().status(status).body(()).unwrap();
    if let Ok(mut send) = respond.send_response(resp, false) {
        let _ = send.send_data(Bytes::from(body), !trailers);
        if trailers {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = send.send_trailers(t);
        }
    }
    if counted {
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some((now, _)) = s.streams.lock().unwrap().get_mut(&conn) {
            *now -= 1;
        }
    }
}
