//! A client connection kept alive across requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{parse_response, Resp};

/// One client connection kept alive across requests (no `Connection: close`), reading each
/// response by its framing (`Content-Length` or chunked), so the next request can follow on
/// the same socket.
pub struct KeptAlive {
    stream: TcpStream,
    /// Bytes read past the last response (none, unless the server sent more than one answer).
    buf: Vec<u8>,
}

impl KeptAlive {
    /// Opens a connection to `addr`; reads time out after 10 s.
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// The socket, for writing raw bytes.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Sends one request (with `Content-Length` when `body` is not empty) and reads its
    /// response.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: fulcrum.test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes)?;
        self.read_response(method == "HEAD")
    }

    /// GET `path`, panicking on transport errors.
    pub fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, &[], b"").expect("request")
    }

    /// Reads one response; `head_only` for the answer to a HEAD request.
    pub fn read_response(&mut self, head_only: bool) -> std::io::Result<Resp> {
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            self.fill()?;
        };
        let head = parse_response(&self.buf[..end])?;
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        let length: usize = if head_only || head.status == 204 || head.status == 304 {
            0
        } else if chunked {
            loop {
                if let Some(p) = self.buf[end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                    break p + 5;
                }
                self.fill()?;
            }
        } else {
            head.header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        while self.buf.len() < end + length {
            self.fill()?;
        }
        let resp = parse_response(&self.buf[..end + length])?;
        self.buf.drain(..end + length);
        Ok(resp)
    }

    /// Waits up to `limit` for the server to close the connection (a read returning end of
    /// stream or a reset); returns how long that took, or `None` if it stayed open or sent data.
    pub fn wait_closed(&mut self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut byte = [0u8; 1];
        let closed = match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        closed.then(|| started.elapsed())
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
