//! A WebSocket backend and client for tests (tungstenite, blocking, one thread per connection).
//!
//! [`WsBackend`] reads each request head itself, so it can answer the way a test needs by path:
//! - no `Upgrade` header (health checks): `200 ok`;
//! - `/deny`: `403` with a body and an `X-Why` header (an upgrade refused);
//! - `/drop`: `101`, then a reset (the stream dies right after the switch);
//! - `/bye`: `101`, echoes one message, then closes the WebSocket itself;
//! - `/push`: `101`, then a `tick N` text every 200 ms besides echoing;
//! - `/flood`: `101`, then 64 KiB messages as fast as the client takes them, until a send
//!   fails (or 30 s pass);
//! - anything else: `101`, then echoes every data message until the client closes.
//!
//! Every request head is recorded; upgraded connections are counted while open.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// Longest a backend connection thread waits for traffic (above the one-minute test).
const BACKEND_READ_TIMEOUT: Duration = Duration::from_secs(90);
/// How often `/push` sends.
const PUSH_EVERY: Duration = Duration::from_millis(200);

/// See the module docs.
pub struct WsBackend {
    id: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    heads: Mutex<Vec<String>>,
    open: AtomicUsize,
    upgraded: AtomicUsize,
    stopping: AtomicBool,
}

impl WsBackend {
    /// Starts it on 127.0.0.1:0.
    pub fn start(id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let accept_shared = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if accept_shared.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let shared = accept_shared.clone();
                std::thread::spawn(move || serve(conn, &shared));
            }
        });
        Self {
            id: id.to_string(),
            addr,
            shared,
        }
    }

    /// A backend entry pointing at it.
    pub fn server(&self, weight: u32) -> fulcrum::backend::BackendServer {
        fulcrum::backend::BackendServer::new(self.id.clone(), format!("http://{}", self.addr))
            .with_weight(weight)
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The heads of the upgrade requests it received (health checks excluded), lower-cased.
    pub fn upgrade_heads(&self) -> Vec<String> {
        self.shared.heads.lock().unwrap().clone()
    }

    /// WebSockets open on it right now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// WebSockets it has switched to so far.
    pub fn upgraded(&self) -> usize {
        self.shared.upgraded.load(Ordering::SeqCst)
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)); // wake accept
    }
}

/// Counts an open WebSocket until dropped.
struct OpenGuard<'a>(&'a Shared);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve(mut conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(BACKEND_READ_TIMEOUT));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
    let field = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    if field("upgrade").is_none() {
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
        return;
    }
    shared.heads.lock().unwrap().push(head.clone());
    if path == "/deny" {
        let body = "no websocket here\n";
        let resp = format!(
            "HTTP/1.1 403 Forbidden\r\nX-Why: denied\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(resp.as_bytes());
        return;
    }
    // The key's case matters for the accept value: take it from the raw head.
    let raw = String::from_utf8_lossy(&buf[..end]).into_owned();
    let key = raw
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if let Some(proto) = field("sec-websocket-protocol") {
        let first = proto
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        resp.push_str(&format!("Sec-WebSocket-Protocol: {first}\r\n"));
    }
    resp.push_str("\r\n");
    if conn.write_all(resp.as_bytes()).is_err() {
        return;
    }
    shared.upgraded.fetch_add(1, Ordering::SeqCst);
    if path == "/drop" {
        let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
        return;
    }
    shared.open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(shared);
    if path == "/flood" {
        flood(conn);
        return;
    }
    if path == "/push" {
        let _ = conn.set_read_timeout(Some(PUSH_EVERY));
    }
    let mut ws = WebSocket::from_raw_socket(conn, Role::Server, None);
    let mut ticks = 0u64;
    let started = std::time::Instant::now();
    loop {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).is_err() {
                    return;
                }
                if path == "/bye" {
                    let _ = ws.close(None);
                    let _ = ws.flush();
                    // wait (bounded) for the client's close answer, then drop the socket
                    let _ = ws.get_ref().set_read_timeout(Some(Duration::from_secs(2)));
                    while ws.read().is_ok() {}
                    return;
                }
            }
            Ok(_) => {} // ping/pong/close: tungstenite answers
            Err(tungstenite::Error::Io(e))
                if path == "/push"
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                if started.elapsed() > BACKEND_READ_TIMEOUT {
                    return;
                }
                ticks += 1;
                if ws.send(Message::text(format!("tick {ticks}"))).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Sends 64 KiB messages until one fails; every send waits at most 30 s.
fn flood(conn: TcpStream) {
    let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
    let mut ws = WebSocket::from_raw_socket(conn, Role::Server, None);
    let chunk = vec![7u8; 64 * 1024];
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if ws.send(Message::binary(chunk.clone())).is_err() {
            return;
        }
    }
}

/// A client WebSocket through `addr` to `path`, offering subprotocol `chat` and compression
/// (the backend takes the protocol and declines compression); reads time out after 10 s.
/// Panics when the handshake fails.
pub fn ws_connect(addr: SocketAddr, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}{path}"))
            .unwrap();
    let headers = req.headers_mut();
    headers.insert("Sec-WebSocket-Protocol", "chat".parse().unwrap());
    headers.insert(
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    let (ws, resp) = tungstenite::client::client(req, stream).expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends `text` and reads the echo (skipping `/push` ticks).
pub fn echo(ws: &mut WebSocket<TcpStream>, text: &str) -> String {
    ws.send(Message::text(text)).expect("send");
    loop {
        match ws.read().expect("read the echo") {
            Message::Text(t) if t.starts_with("tick ") => continue,
            Message::Text(t) => return t,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads until the connection ends (close frame, EOF or reset) or `limit` passes; returns
/// whether it ended, with the data messages read before.
pub fn wait_closed(ws: &mut WebSocket<TcpStream>, limit: Duration) -> (bool, Vec<Message>) {
    let deadline = std::time::Instant::now() + limit;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return (false, got);
        }
        ws.get_ref().set_read_timeout(Some(left)).unwrap();
        match ws.read() {
            Ok(Message::Close(_)) => return (true, got),
            Ok(m) => got.push(m),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, got)
            }
            Err(_) => return (true, got),
        }
    }
}

/// A local TLS client tunnel: connections to the returned address (plain TCP) are carried over
/// TLS to `target`, with SNI `localhost`, ALPN `http/1.1` (what browsers offer for a
/// WebSocket) and `root` as the only trusted certificate. One thread, one connection.
pub fn tls_tunnel(
    target: SocketAddr,
    root: pingora_core::tls::CertificateDer<'static>,
) -> SocketAddr {
    use pingora_core::tls::{ClientConfig, RootCertStore, ServerName, TlsConnector};
    pingora_core::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    roots.add(root).expect("trust the test certificate");
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let accepted = tokio::time::timeout(Duration::from_secs(30), listener.accept());
            let Ok(Ok((mut plain, _))) = accepted.await else {
                return;
            };
            let tcp = tokio::net::TcpStream::connect(target)
                .await
                .expect("connect");
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
            let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
        });
    });
    addr
}
