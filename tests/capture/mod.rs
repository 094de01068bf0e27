//! A backend that records the raw bytes of every request it receives, and a raw client that
//! sends exactly the bytes a test writes: for probes of what Fulcrum forwards byte for byte.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fulcrum::BackendServer;

/// A backend on 127.0.0.1:0 that answers every request `200 ok` (keeping the connection open)
/// and records each request's raw head and body. Health checks (`GET /health`) are answered
/// but not recorded.
pub struct CaptureBackend {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl CaptureBackend {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let log = log.clone();
                std::thread::spawn(move || serve(conn, &log));
            }
        });
        Self { addr, requests }
    }

    pub fn server(&self) -> BackendServer {
        BackendServer::new("capture", format!("http://{}", self.addr))
    }

    /// The requests received so far (health checks excluded), raw.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }

    /// The only request received (panics when there is not exactly one), as text.
    pub fn only_request(&self) -> String {
        let all = self.requests();
        assert_eq!(all.len(), 1, "requests: {:?}", texts(&all));
        String::from_utf8_lossy(&all[0]).into_owned()
    }
}

fn texts(all: &[Vec<u8>]) -> Vec<String> {
    all.iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect()
}

/// Serves one backend connection: read a head, its body (by the last `Content-Length` or
/// chunked framing), record, answer, repeat.
fn serve(mut conn: TcpStream, log: &Mutex<Vec<Vec<u8>>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = Vec::new();
    loop {
        let Some(head_end) =
            read_until(&mut conn, &mut buf, |b| find(b, b"\r\n\r\n").map(|i| i + 4))
        else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let chunked = header_values(&head, "transfer-encoding").any(|v| v.contains("chunked"));
        let length = header_values(&head, "content-length")
            .last()
            .and_then(|v| v.split(',').next().and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0usize);
        let end = if chunked {
            read_until(&mut conn, &mut buf, |b| {
                find(&b[head_end..], b"0\r\n\r\n").map(|i| head_end + i + 5)
            })
        } else {
            read_until(&mut conn, &mut buf, |b| {
                (b.len() >= head_end + length).then_some(head_end + length)
            })
        };
        let Some(end) = end else { return };
        let request: Vec<u8> = buf.drain(..end).collect();
        if !request.starts_with(b"GET /health ") {
            log.lock().unwrap().push(request);
        }
        let close = header_values(&head, "connection").any(|v| v.contains("close"));
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
            || close
        {
            return;
        }
    }
}

/// Reads into `buf` until `done` finds an end; `None` when the peer closes first.
fn read_until(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = done(buf) {
            return Some(end);
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The values of header `name` (lowercase) in a lowercased head, in order.
pub fn header_values<'a>(head: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    head.split("\r\n").skip(1).filter_map(move |line| {
        let (k, v) = line.split_once(':')?;
        (k.eq_ignore_ascii_case(name)).then_some(v.trim())
    })
}

/// Header lines of a raw request whose name is `name` (any case), values as sent.
pub fn headers_named(request: &str, name: &str) -> Vec<String> {
    let head = request.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .collect()
}

/// A connection to `addr`, from `source` when given (any 127.0.0.x).
pub fn connect(addr: SocketAddr, source: Option<IpAddr>) -> TcpStream {
    let stream = match source {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"),
        Some(ip) => {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            sock.bind(&SocketAddr::new(ip, 0).into()).expect("bind");
            sock.connect_timeout(&addr.into(), Duration::from_secs(5))
                .expect("connect");
            sock.into()
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
    /// Whether the server closed the connection after the response.
    pub closed: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        headers_named(&self.head, name).into_iter().next()
    }
}

/// Sends `bytes` on a new connection and reads the response and whether the connection closes
/// after it (waiting at most 5 s for the close).
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut stream = connect(addr, None);
    stream.write_all(bytes).expect("write");
    let mut resp = read_response(&mut stream);
    resp.closed = closes(&mut stream);
    resp
}

/// Reads one response framed by `Content-Length` (or until the connection closes).
pub fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = read_until(stream, &mut buf, |b| find(b, b"\r\n\r\n").map(|i| i + 4))
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: Option<usize> = headers_named(&head, "content-length")
        .first()
        .and_then(|v| v.parse().ok());
    let end = match length {
        Some(n) => read_until(stream, &mut buf, |b| {
            (b.len() >= head_end + n).then_some(head_end + n)
        })
        .expect("truncated body"),
        None => {
            let _ = stream.read_to_end(&mut buf);
            buf.len()
        }
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    RawResponse {
        status,
        body: String::from_utf8_lossy(&buf[head_end..end]).into_owned(),
        head,
        closed: length.is_none(),
    }
}

/// Whether the peer closes the connection (reads EOF) within 5 s.
fn closes(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut byte = [0u8; 1];
    while Instant::now() < deadline {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => return false,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}
