//! Built-in demo backends, behind `fulcrum --demo`, and the same small HTTP/1.1 server the
//! integration tests use as real backends.
//!
//! A [`DemoBackend`] listens on a loopback port, answers every request with
//! `Response from <id>` after its configured latency, answers `GET /health` with 200 (or 503 after
//! [`DemoBackend::set_healthy`]`(false)`), echoes the request headers on `GET /debug/headers`, and
//! counts what it served. It supports keep-alive and request bodies (`Content-Length` or
//! chunked), which is what Pingora's pooled upstream connections need. It is a test and demo
//! server, not a production web server.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::backend::BackendServer;
use crate::config::LoadBalancerConfig;
use crate::server::{LoadBalancer, StartError};
use crate::Strategy;

/// Largest request head the demo server reads.
const MAX_HEAD: usize = 64 * 1024;

/// What a demo backend has served, shared with its handle.
#[derive(Debug, Default)]
struct DemoStats {
    hits: AtomicU64,
    health_checks: AtomicU64,
    healthy: AtomicBool,
    latency_ms: AtomicU64,
    /// Status for ordinary requests; 0 = answer normally with 200.
    status: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// A running demo backend.
pub struct DemoBackend {
    id: String,
    addr: SocketAddr,
    stats: Arc<DemoStats>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl DemoBackend {
    /// Starts a backend on a free loopback port.
    pub fn start(id: &str, latency: Duration) -> io::Result<Self> {
        Self::serve(id, latency, TcpListener::bind("127.0.0.1:0")?)
    }

    /// Starts a backend on an already bound listener.
    pub fn serve(id: &str, latency: Duration, listener: TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(DemoStats {
            healthy: AtomicBool::new(true),
            latency_ms: AtomicU64::new(latency.as_millis() as u64),
            ..DemoStats::default()
        });
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (task_id, task_stats) = (id.to_string(), stats.clone());
        let thread = std::thread::Builder::new()
            .name(format!("demo-{id}"))
            .spawn(move || {
                runtime.block_on(accept_loop(listener, task_id, task_stats, stopped));
            })?;
        Ok(Self {
            id: id.to_string(),
            addr,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// The backend's id (what it answers with).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A [`BackendServer`] entry pointing at this backend.
    pub fn server(&self, weight: u32) -> BackendServer {
        BackendServer::new(self.id.clone(), self.url()).with_weight(weight)
    }

    /// Requests served, health checks excluded.
    pub fn hits(&self) -> u64 {
        self.stats.hits.load(Ordering::SeqCst)
    }

    /// Health checks (`GET /health`) answered.
    pub fn health_checks(&self) -> u64 {
        self.stats.health_checks.load(Ordering::SeqCst)
    }

    /// Makes `/health` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.stats.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Changes the delay before each answer.
    pub fn set_latency(&self, latency: Duration) {
        self.stats
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes ordinary requests (not `/health`) answer with `status` (0 = normal 200 answers).
    pub fn set_status(&self, status: u16) {
        self.stats.status.store(u64::from(status), Ordering::SeqCst);
    }

    /// Most requests it has served at the same time.
    pub fn max_concurrent(&self) -> u64 {
        self.stats.max_in_flight.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection; further connects are refused.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DemoBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(
    listener: TcpListener,
    id: String,
    stats: Arc<DemoStats>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("demo backend {id}: {e}");
            return;
        }
    };
    let id: Arc<str> = id.into();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (id, stats) = (id.clone(), stats.clone());
                    conns.spawn(async move {
                        if let Err(e) = serve_conn(stream, &id, &stats).await {
                            log::debug!("demo backend {id}: {e}");
                        }
                    });
                }
                Err(e) => log::debug!("demo backend {id}: accept: {e}"),
            },
        }
    }
    conns.shutdown().await;
}

/// One parsed request head.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    keep_alive: bool,
    content_length: Option<u64>,
    chunked: bool,
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let n = reader.read_until(b'\n', &mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf.ends_with(b"\r\n\r\n") || buf == b"\r\n" {
            if buf == b"\r\n" {
                buf.clear();
                continue;
            }
            break;
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let version = req.version.unwrap_or(1);
    let mut head = Head {
        method: req.method.unwrap_or("GET").to_string(),
        path: req.path.unwrap_or("/").to_string(),
        headers: Vec::new(),
        keep_alive: version == 1,
        content_length: None,
        chunked: false,
    };
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value).into_owned();
        if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                head.keep_alive = false;
            } else if v.contains("keep-alive") {
                head.keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.trim().parse().ok();
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        }
        head.headers.push((h.name.to_string(), value));
    }
    Ok(Some(head))
}

/// Reads and discards the request body.
async fn skip_body(reader: &mut BufReader<TcpStream>, head: &Head) -> io::Result<()> {
    if head.chunked {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                // trailers until the empty line
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
                        return Ok(());
                    }
                }
            }
            let copied =
                tokio::io::copy(&mut (&mut *reader).take(size + 2), &mut tokio::io::sink()).await?;
            if copied < size + 2 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    } else if let Some(len) = head.content_length {
        let copied = tokio::io::copy(&mut (&mut *reader).take(len), &mut tokio::io::sink()).await?;
        if copied < len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

fn status_line(code: http::StatusCode) -> String {
    format!(
        "{} {}",
        code.as_u16(),
        code.canonical_reason().unwrap_or("Unknown")
    )
}

async fn serve_conn(stream: TcpStream, id: &str, stats: &DemoStats) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader).await? {
        skip_body(&mut reader, &head).await?;
        let (status, body) = if head.path == "/health" {
            stats.health_checks.fetch_add(1, Ordering::SeqCst);
            if stats.healthy.load(Ordering::SeqCst) {
                ("200 OK".to_string(), "ok\n".to_string())
            } else {
                (
                    "503 Service Unavailable".to_string(),
                    "unhealthy\n".to_string(),
                )
            }
        } else {
            stats.hits.fetch_add(1, Ordering::SeqCst);
            let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let latency = stats.latency_ms.load(Ordering::SeqCst);
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            let forced = stats.status.load(Ordering::SeqCst);
            if forced != 0 {
                let code = http::StatusCode::from_u16(forced as u16)
                    .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                (status_line(code), format!("{} from {id}\n", code.as_u16()))
            } else if head.path == "/debug/headers" {
                let mut body = String::new();
                for (k, v) in &head.headers {
                    body.push_str(&format!("{}: {v}\n", k.to_ascii_lowercase()));
                }
                ("200 OK".to_string(), body)
            } else {
                ("200 OK".to_string(), format!("Response from {id}"))
            }
        };
        let body = if head.method == "HEAD" { "" } else { &body };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend-Id: {id}\r\n{}\r\n{body}",
            body.len(),
            if head.keep_alive { "" } else { "Connection: close\r\n" },
        );
        reader.get_mut().write_all(response.as_bytes()).await?;
        if !head.keep_alive {
            break;
        }
    }
    Ok(())
}

/// The demo's backends: ids, weights and latencies from the seed's strategy comparison.
pub const DEMO_BACKENDS: [(&str, u32, u64); 3] =
    [("web1", 3, 10), ("web2", 2, 50), ("web3", 1, 100)];

/// The demo's configuration before environment overrides: weighted round robin on
/// 127.0.0.1:8080, admin on 127.0.0.1:9090, health checks every 5 s, quiet access log.
pub fn demo_config(backends: &[DemoBackend]) -> LoadBalancerConfig {
    LoadBalancerConfig {
        strategy: Strategy::WeightedRoundRobin,
        bind_address: std::net::Ipv4Addr::LOCALHOST.into(),
        health_check_interval: Duration::from_secs(5),
        health_check_timeout: Some(Duration::from_secs(2)),
        logging_enabled: false,
        backends: backends
            .iter()
            .zip(DEMO_BACKENDS)
            .map(|(b, (_, weight, _))| b.server(weight))
            .collect(),
        ..LoadBalancerConfig::default()
    }
}

/// Runs `fulcrum --demo`: three demo backends and Fulcrum in front of them, until Ctrl-C.
pub fn run_demo() -> Result<(), StartError> {
    let backends = DEMO_BACKENDS
        .iter()
        .map(|(id, _, ms)| DemoBackend::start(id, Duration::from_millis(*ms)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(StartError::io("start the demo backends"))?;
    let mut config = demo_config(&backends);
    config.apply_env(crate::config::process_env())?;
    let lb = LoadBalancer::new(config)?;
    let (listen, admin) = (lb.listen_addr(), lb.admin_addr());
    println!("Fulcrum demo: strategy {}", lb.config().strategy);
    for (b, (_, weight, ms)) in backends.iter().zip(DEMO_BACKENDS) {
        println!(
            "  backend {:<5} {}  weight {weight}  latency {ms} ms",
            b.id(),
            b.url()
        );
    }
    println!();
    println!("Try:");
    println!("  for i in $(seq 12); do curl -s http://{listen}/; echo; done");
    println!("  curl -s http://{admin}/health");
    println!("  curl -s http://{listen}/debug/headers      # what the backend receives");
    println!();
    println!("Ctrl-C stops everything.");
    lb.exit_when_drained().run(None)?;
    drop(backends);
    Ok(())
}
