//! A hand-written backend that records what it read and then answers, holds or resets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a [`RawBackend`] does with a request once it has read all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// Answer `200 Response from <id>` (after any [`RawBackend::hold`]).
    Answer,
    /// Reset the connection (RST, no answer): the request went up, nothing comes back.
    Reset,
}

/// A request a [`RawBackend`] received in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// A minimal backend on 127.0.0.1:0, one thread per connection and one request per connection
/// (it answers `Connection: close`), that records every request it read in full (method, path,
/// body with `Content-Length`) and then answers or resets as its [`RawMode`] says. `GET /health`
/// always gets 200 and is not recorded.
pub struct RawBackend {
    id: String,
    addr: SocketAddr,
    shared: Arc<RawShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct RawShared {
    mode: RawMode,
    seen: Mutex<Vec<Seen>>,
    holding: AtomicBool,
    stopping: AtomicBool,
}

impl RawBackend {
    /// Starts it.
    pub fn start(id: &str, mode: RawMode) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(RawShared {
            mode,
            seen: Default::default(),
            holding: Default::default(),
            stopping: Default::default(),
        });
        let (task_shared, task_id) = (shared.clone(), id.to_string());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if task_shared.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (shared, id) = (task_shared.clone(), task_id.clone());
                std::thread::spawn(move || raw_serve(conn, &id, &shared));
            }
        });
        Self {
            id: id.to_string(),
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// A [`fulcrum::backend::BackendServer`] entry pointing at it.
    pub fn server(&self, weight: u32) -> fulcrum::backend::BackendServer {
        fulcrum::backend::BackendServer::new(self.id.clone(), format!("http://{}", self.addr))
            .with_weight(weight)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests read in full so far (health checks excluded).
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The requests for `path`.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }

    /// From now on, answers wait (at most 30 s) until [`RawBackend::release`].
    pub fn hold(&self) {
        self.shared.holding.store(true, Ordering::SeqCst);
    }

    /// Lets held answers go.
    pub fn release(&self) {
        self.shared.holding.store(false, Ordering::SeqCst);
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.release();
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)); // wake accept
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves one request on `conn` (see [`RawBackend`]).
fn raw_serve(mut conn: TcpStream, id: &str, shared: &RawShared) {
    use std::sync::atomic::Ordering;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut words = head.split(' ');
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or_default().to_string();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < end + length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let answer = |conn: &mut TcpStream, body: &str| {
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Backend-Id: {id}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(resp.as_bytes());
    };
    if path == "/health" {
        answer(&mut conn, "ok\n");
        return;
    }
    shared.seen.lock().unwrap().push(Seen {
        method,
        path,
        body: buf[end..end + length].to_vec(),
    });
    match shared.mode {
        RawMode::Reset => {
            // SO_LINGER 0: close sends a reset instead of an orderly end of stream
            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
        }
        RawMode::Answer => {
            let deadline = Instant::now() + Duration::from_secs(30);
            while shared.holding.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            answer(&mut conn, &format!("Response from {id}"));
        }
    }
}
