//! Shared test harness: real demo backends on 127.0.0.1:0, a real Fulcrum started in-process,
//! and a small blocking HTTP/1.1 client that can bind its source address to any 127.0.0.x.
//! Also: a kept-alive client connection ([`KeptAlive`]), a backend that records what it read
//! and answers, holds or resets ([`RawBackend`]), the admin API ([`admin_call`]) and the one
//! way a test skips when an external tool is missing ([`tools_present`]). Process-level
//! tests use [`process`] (the built binary) and [`load`] (continuous load with counted
//! outcomes). HTTPS and HTTP/2 backends with generated certificates: [`tls_backend`].
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use fulcrum::config::LoadBalancerConfig;
use fulcrum::demo::DemoBackend;
use fulcrum::server::RunningLoadBalancer;
use fulcrum::{LoadBalancer, Strategy};

mod client;
pub mod instance;
pub mod load;
pub mod process;
mod raw_backend;
pub mod tls_backend;
pub mod ws;
#[allow(unused_imports)]
pub use client::KeptAlive;
#[allow(unused_imports)]
pub use raw_backend::{RawBackend, RawMode, Seen};

/// Starts one demo backend per `(id, latency_ms)`.
pub fn backends(specs: &[(&str, u64)]) -> Vec<DemoBackend> {
    specs
        .iter()
        .map(|(id, ms)| DemoBackend::start(id, Duration::from_millis(*ms)).expect("backend"))
        .collect()
}

/// A test config: loopback, free ports, no access log, health checks every `interval`.
pub fn config(strategy: Strategy, backends: &[(&DemoBackend, u32)]) -> LoadBalancerConfig {
    LoadBalancerConfig {
        strategy,
        port: 0,
        bind_address: "127.0.0.1".parse().unwrap(),
        admin_address: "127.0.0.1:0".parse().unwrap(),
        health_check_interval: Duration::from_secs(60),
        health_check_timeout: Some(Duration::from_secs(1)),
        logging_enabled: false,
        backends: backends.iter().map(|(b, w)| b.server(*w)).collect(),
        ..LoadBalancerConfig::default()
    }
}

/// Starts Fulcrum and waits until every backend has had its first health check.
pub fn start(config: LoadBalancerConfig) -> RunningLoadBalancer {
    let lb = LoadBalancer::new(config)
        .expect("valid config")
        .start()
        .expect("start");
    let registry = lb.backends().clone();
    assert!(
        wait_until(Duration::from_secs(10), || registry
            .snapshot()
            .iter()
            .all(|b| b.health.last_check().at.is_some())),
        "first health checks did not finish"
    );
    lb
}

/// Polls `f` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|s| s.as_str())
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    source: Option<IpAddr>,
) -> std::io::Result<Resp> {
    let mut stream = connect(addr, source)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    };
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(ip, 0).into())?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    Ok(sock.into())
}

fn parse_response(raw: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of head"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..eol])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// GET `path`, panicking on transport errors.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], None).expect("request")
}

/// GET `/` from the given source address.
pub fn get_from(addr: SocketAddr, source: IpAddr) -> Resp {
    request(addr, "GET", "/", &[], Some(source)).expect("request")
}

/// The backend id in a demo backend's answer (`Response from web1` → `web1`).
pub fn served_by(resp: &Resp) -> String {
    assert_eq!(resp.status, 200, "unexpected response {resp:?}");
    resp.body
        .strip_prefix("Response from ")
        .unwrap_or_else(|| panic!("not a demo answer: {resp:?}"))
        .to_string()
}

/// Sends `n` sequential GETs and returns who served each.
pub fn sequence(addr: SocketAddr, n: usize) -> Vec<String> {
    (0..n).map(|_| served_by(&get(addr, "/"))).collect()
}

/// Counts occurrences of each id.
pub fn counts(ids: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.clone()).or_insert(0) += 1;
    }
    m
}

/// `threads` clients each send requests back to back until `total` requests are done (or 30 s
/// pass); returns who served each.
pub fn concurrent(addr: SocketAddr, threads: usize, total: usize) -> Vec<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let left = Arc::new(AtomicUsize::new(total));
    let out = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let deadline = Instant::now() + Duration::from_secs(30);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (left, out) = (left.clone(), out.clone());
            std::thread::spawn(move || {
                while Instant::now() < deadline
                    && left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                {
                    let id = served_by(&get(addr, "/"));
                    out.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    let v = out.lock().unwrap().clone();
    v
}

/// The `/health` JSON of a running Fulcrum.
pub fn health(lb: &RunningLoadBalancer) -> (u16, serde_json::Value) {
    let r = get(lb.admin_addr(), "/health");
    (r.status, serde_json::from_str(&r.body).expect("json"))
}

/// `/health`'s entry for backend `id` (null when there is none).
pub fn health_entry(lb: &RunningLoadBalancer, id: &str) -> serde_json::Value {
    let (_, json) = health(lb);
    json["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .cloned()
        .unwrap_or_default()
}

/// The health string `/health` reports for backend `id`.
pub fn health_of(lb: &RunningLoadBalancer, id: &str) -> String {
    health_entry(lb, id)["health"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Calls the admin API: `method path` with an optional JSON `body` and bearer `token`.
pub fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let len = body.map_or(0, |b| b.len()).to_string();
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {len}\r\n"
    );
    if let Some(a) = &auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    stream.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    parse_response(&raw).expect("response")
}

/// Whether the calling test has the external tools it needs; `missing` names each one that is
/// not there and how to get it. When something is missing the test cannot run:
/// - with `CI` set it fails (CI installs every tool, so a skip there would hide a regression);
/// - otherwise a `SKIPPED <test>: missing ...` line is written straight to the process's
///   stderr, which `cargo test` shows (libtest captures `print!`/`eprintln!` of a passing test,
///   not direct writes), and this returns false so the test returns early.
///
/// Every test that needs a tool outside Rust starts with
/// `if !tools_present(...) { return; }`, so a skip always looks the same.
pub fn tools_present(missing: impl IntoIterator<Item = String>) -> bool {
    let missing: Vec<String> = missing.into_iter().collect();
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    let what = missing.join("; ");
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI is set but the test cannot run; missing: {what}"
    );
    let line = format!("SKIPPED {test}: missing {what} (with CI set this fails instead)\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    false
}

/// `program` and how to install it (`how`), unless `program --version` runs and succeeds.
pub fn missing_program(program: &str, how: &str) -> Option<String> {
    let runs = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!runs).then(|| format!("`{program}` on PATH ({how})"))
}
