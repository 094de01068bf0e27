//! Bounded continuous GET load for process-level tests that replace the server under it
//! (upgrades): some clients open a new connection per request, others keep one alive, and
//! every outcome is counted per phase of the test.
//!
//! The one retry allowed is ordinary HTTP/1.1 client behaviour (RFC 9112 §9.3.1): when the
//! server closed the connection before any byte of the response arrived (end of stream, or a
//! reset, on write or read), the client opens a new connection and sends the idempotent GET
//! again, once. Such reconnects are counted apart. Everything else is a failure: a connect
//! that fails (refused), a reset or end of stream after response bytes arrived, a timeout, a
//! status other than 200, and a request that fails twice.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::parse_response;

/// What happened to the requests that started during one phase.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PhaseStats {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered 200.
    pub ok: u64,
    /// Resends after a kept-alive (reused) connection was closed before any response byte.
    pub kept_reconnects: u64,
    /// Resends after a brand-new connection was closed before any response byte.
    pub fresh_reconnects: u64,
    /// Connections the clients opened.
    pub connections: u64,
    /// Kept-alive connections the server ended with `Connection: close` on a response.
    pub closes_announced: u64,
    /// Every failure, described.
    pub failures: Vec<String>,
}

impl PhaseStats {
    /// Fails (showing the first failures and `log`) unless every request was answered 200.
    #[allow(dead_code)] // not every test binary that includes this module calls it
    pub fn assert_all_answered(&self, log: &str) {
        assert!(
            self.failures.is_empty(),
            "{} of {} requests failed, first ones: {:#?}\n{log}",
            self.failures.len(),
            self.requests,
            &self.failures[..self.failures.len().min(10)],
        );
        assert_eq!(self.ok, self.requests);
    }

    fn add(&mut self, other: &PhaseStats) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.kept_reconnects += other.kept_reconnects;
        self.fresh_reconnects += other.fresh_reconnects;
        self.connections += other.connections;
        self.closes_announced += other.closes_announced;
        self.failures.extend(other.failures.iter().cloned());
    }
}

/// Load running on background threads until [`Load::stop`], its time limit or its request cap.
pub struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    stats: Arc<Mutex<Vec<PhaseStats>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `fresh` clients with a new connection per request and `kept` clients on kept-alive
    /// connections, each sending GET `/` back to back, until `limit` passes or `cap` requests
    /// were sent in all.
    pub fn start(addr: SocketAddr, fresh: usize, kept: usize, cap: u64, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Mutex::new(vec![PhaseStats::default()]));
        let left = Arc::new(AtomicU64::new(cap));
        let deadline = Instant::now() + limit;
        let threads = (0..fresh + kept)
            .map(|i| {
                let keep = i >= fresh;
                let (stop, phase, stats, left) =
                    (stop.clone(), phase.clone(), stats.clone(), left.clone());
                std::thread::spawn(move || {
                    let mut conn = None;
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                    {
                        let at = phase.load(Ordering::SeqCst);
                        let mut one = PhaseStats {
                            requests: 1,
                            ..PhaseStats::default()
                        };
                        match request(&mut conn, addr, keep, &mut one) {
                            Ok(()) => one.ok = 1,
                            Err(e) => one.failures.push(format!(
                                "phase {at}, {} client: {e}",
                                if keep { "kept-alive" } else { "fresh" }
                            )),
                        }
                        stats.lock().unwrap()[at].add(&one);
                    }
                })
            })
            .collect();
        Self {
            stop,
            phase,
            stats,
            threads,
        }
    }

    /// Starts the next phase: requests begun from now on are counted apart.
    pub fn next_phase(&self) {
        self.stats.lock().unwrap().push(PhaseStats::default());
        self.phase.fetch_add(1, Ordering::SeqCst);
    }

    /// All phases together, so far.
    pub fn total(&self) -> PhaseStats {
        total(&self.stats.lock().unwrap())
    }

    /// Stops the clients and returns the counts per phase.
    pub fn stop(self) -> Vec<PhaseStats> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load client");
        }
        let v = self.stats.lock().unwrap().clone();
        v
    }
}

/// The sum of `phases`.
pub fn total(phases: &[PhaseStats]) -> PhaseStats {
    let mut sum = PhaseStats::default();
    for p in phases {
        sum.add(p);
    }
    sum
}

/// How one exchange on a connection ended.
enum Exchange {
    /// A whole response; `close` when the connection cannot carry another request.
    Answered { status: u16, close: bool },
    /// The server closed the connection before any response byte arrived.
    ClosedEarly(String),
    /// Anything else.
    Failed(String),
}

/// One GET with the one allowed resend; counts connections and reconnects in `stats`.
fn request(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    keep: bool,
    stats: &mut PhaseStats,
) -> Result<(), String> {
    for attempt in 0..2 {
        let reused = conn.is_some();
        let stream = match conn {
            Some(s) => s,
            None => {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(|e| e.to_string())?;
                stats.connections += 1;
                conn.insert(s)
            }
        };
        match exchange(stream, keep) {
            Exchange::Answered { status, close } => {
                if close || !keep {
                    *conn = None;
                }
                if close && keep {
                    stats.closes_announced += 1;
                }
                return if status == 200 {
                    Ok(())
                } else {
                    Err(format!("status {status}"))
                };
            }
            Exchange::ClosedEarly(why) => {
                *conn = None;
                if attempt == 1 {
                    return Err(format!("closed before a response, twice: {why}"));
                }
                if reused {
                    stats.kept_reconnects += 1;
                } else {
                    stats.fresh_reconnects += 1;
                }
            }
            Exchange::Failed(why) => {
                *conn = None;
                return Err(why);
            }
        }
    }
    unreachable!("the loop returns on its second attempt")
}

/// Writes one GET and reads its response by its framing.
fn exchange(stream: &mut TcpStream, keep: bool) -> Exchange {
    let close = if keep { "" } else { "Connection: close\r\n" };
    let req = format!("GET / HTTP/1.1\r\nHost: fulcrum.test\r\n{close}\r\n");
    let early = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        )
    };
    if let Err(e) = stream.write_all(req.as_bytes()) {
        return if early(&e) {
            Exchange::ClosedEarly(format!("write: {e}"))
        } else {
            Exchange::Failed(format!("write: {e}"))
        };
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = complete(&buf) {
            return match parse_response(&buf[..end]) {
                Ok(r) => Exchange::Answered {
                    status: r.status,
                    close: r
                        .header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close")),
                },
                Err(e) => Exchange::Failed(format!("bad response: {e}")),
            };
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Exchange::ClosedEarly("end of stream".into()),
            Ok(0) => return Exchange::Failed(format!("end of stream after {} bytes", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() && early(&e) => {
                return Exchange::ClosedEarly(format!("read: {e}"))
            }
            Err(e) => return Exchange::Failed(format!("read: {e} after {} bytes", buf.len())),
        }
    }
}

/// The length of the first whole response in `buf`, if it is all there.
fn complete(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body = &buf[head_end..];
    if head.contains("transfer-encoding: chunked") {
        let end = body.windows(5).position(|w| w == b"0\r\n\r\n")? + 5;
        return Some(head_end + end);
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (body.len() >= length).then_some(head_end + length)
}
