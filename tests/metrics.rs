//! Metrics through a real Fulcrum: the JSON snapshot and the Prometheus text agree with the
//! requests a client sent, `promtool check metrics` finds nothing to lint, and a real Prometheus
//! server scrapes the admin listener.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package. Without them the last two
//! tests are skipped with a notice `cargo test` shows, or fail when `CI` is set (see
//! `common::tools_present`).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use fulcrum::config::RateLimitConfig;
use fulcrum::server::RunningLoadBalancer;
use fulcrum::Strategy;
use serde_json::Value;

/// How to get `promtool` and `prometheus`.
const PROMETHEUS_PACKAGE: &str = "apt-get install -y --no-install-recommends prometheus";

/// Waits for `child` at most `limit`; kills it when the time is up.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch directory and an optional child process, both cleaned up on drop (even on panic).
struct Scratch {
    dir: PathBuf,
    child: Option<Child>,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("fulcrum-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir, child: None }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// What the client saw.
#[derive(Debug, Default)]
struct Sent {
    total: u64,
    by_status: BTreeMap<u16, u64>,
    by_backend: BTreeMap<String, u64>,
}

impl Sent {
    fn send(&mut self, addr: SocketAddr, source: IpAddr) {
        let r = request(addr, "GET", "/", &[], Some(source)).expect("request");
        self.total += 1;
        *self.by_status.entry(r.status).or_default() += 1;
        if let Some(id) = r.header("x-backend-id") {
            *self.by_backend.entry(id.to_string()).or_default() += 1;
        }
    }

    fn status(&self, code: u16) -> u64 {
        self.by_status.get(&code).copied().unwrap_or(0)
    }

    fn backend(&self, id: &str) -> u64 {
        self.by_backend.get(id).copied().unwrap_or(0)
    }
}

fn metrics_json(lb: &RunningLoadBalancer, accept_header: bool) -> Value {
    let r = if accept_header {
        request(
            lb.admin_addr(),
            "GET",
            "/metrics",
            &[("Accept", "application/json")],
            None,
        )
        .expect("request")
    } else {
        get(lb.admin_addr(), "/metrics?format=json")
    };
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_str(&r.body).expect("json")
}

fn metrics_text(lb: &RunningLoadBalancer) -> String {
    let r = get(lb.admin_addr(), "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    r.body
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn json_and_text_agree_with_what_was_sent() {
    let b = backends(&[("web1", 0), ("web2", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.max_retries = 0;
    cfg.circuit_breaker_enabled = false;
    cfg.rate_limit = Some(RateLimitConfig {
        requests_per_second: 1,
        burst: 8,
    });
    let lb = start(cfg);
    b[1].set_status(503);
    let addr = lb.listen_addr();

    let mut sent = Sent::default();
    // three well-behaved clients stay within the burst...
    for n in 2..=4 {
        for _ in 0..6 {
            sent.send(addr, client(n));
        }
    }
    // ...and one floods
    for _ in 0..16 {
        sent.send(addr, client(9));
    }
    let (ok, unavailable, limited) = (sent.status(200), sent.status(503), sent.status(429));
    assert_eq!(ok + unavailable + limited, sent.total, "{sent:?}");
    assert!(unavailable > 0 && limited > 0, "{sent:?}");
    assert_eq!(sent.backend("web1"), ok);
    assert_eq!(sent.backend("web2"), unavailable);
    assert_eq!((b[0].hits(), b[1].hits()), (ok, unavailable));

    // the request is counted when its log phase ends, maybe just after the client has its answer
    assert!(
        wait_until(Duration::from_secs(10), || {
            let j = metrics_json(&lb, false);
            j["total_requests"] == sent.total && j["active_connections"] == 0
        }),
        "counters never reached {sent:?}: {}",
        metrics_json(&lb, false)
    );

    for accept_header in [false, true] {
        let j = metrics_json(&lb, accept_header);
        let how = if accept_header { "Accept" } else { "?format" };
        assert_eq!(j["total_requests"], sent.total, "{how}");
        assert_eq!(j["failed_requests"], unavailable, "{how}");
        assert_eq!(j["successful_requests"], ok + limited, "{how}");
        assert_eq!(j["rate_limited_requests"], limited, "{how}");
        assert_eq!(j["retries"], 0, "{how}");
        assert_eq!(j["retry_budget_exhausted"], 0, "{how}");
        assert_eq!(j["circuit_breaker_trips"], 0, "{how}");
        assert_eq!(j["active_connections"], 0, "{how}");
        assert_eq!(j["strategy"], "round_robin");
        assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
        assert!(j["average_response_time"].as_f64().unwrap() > 0.0);
        assert!(j["requests_per_second"].as_f64().unwrap() > 0.0);
        assert!(j["uptime_seconds"].as_f64().unwrap() > 0.0);

        let web1 = &j["servers"]["web1"];
        assert_eq!(web1["url"], b[0].url());
        assert_eq!(web1["requests"], ok, "{how}");
        assert_eq!(web1["failures"], 0);
        assert_eq!(web1["availability"], 1.0);
        assert_eq!(web1["responses"]["2xx"], ok);
        assert_eq!(web1["responses"]["5xx"], 0);
        assert_eq!(web1["health"], "healthy");
        assert_eq!(web1["breaker"], "disabled");
        assert_eq!(web1["draining"], false);
        assert_eq!(web1["weight"], 1);
        assert_eq!(web1["active_connections"], 0);
        assert!(web1["response_time"].as_f64().is_some(), "{web1}");

        let web2 = &j["servers"]["web2"];
        assert_eq!(web2["requests"], unavailable, "{how}");
        assert_eq!(web2["failures"], unavailable, "503 is a failure status");
        assert_eq!(web2["availability"], 0.0);
        assert_eq!(web2["responses"]["5xx"], unavailable);
        assert_eq!(web2["responses"]["2xx"], 0);
    }

    let text = metrics_text(&lb);
    let as_f = |n: u64| Some(n as f64);
    let want = [
        (
            "fulcrum_requests_total{backend=\"web1\",code_class=\"2xx\"}",
            ok,
        ),
        (
            "fulcrum_requests_total{backend=\"web2\",code_class=\"5xx\"}",
            unavailable,
        ),
        (
            "fulcrum_requests_total{backend=\"none\",code_class=\"4xx\"}",
            limited,
        ),
        ("fulcrum_rate_limited_requests_total", limited),
        ("fulcrum_request_duration_seconds_count", sent.total),
        (
            "fulcrum_upstream_duration_seconds_count{backend=\"web1\"}",
            ok,
        ),
        (
            "fulcrum_upstream_duration_seconds_count{backend=\"web2\"}",
            unavailable,
        ),
        (
            "fulcrum_backend_attempts_total{backend=\"web2\"}",
            unavailable,
        ),
        (
            "fulcrum_backend_failures_total{backend=\"web2\"}",
            unavailable,
        ),
        ("fulcrum_backend_up{backend=\"web1\"}", 1),
        ("fulcrum_backend_in_flight{backend=\"web1\"}", 0),
        ("fulcrum_client_connections", 0),
        ("fulcrum_retries_total", 0),
    ];
    for (series, n) in want {
        assert_eq!(sample(&text, series), as_f(n), "{series} in\n{text}");
    }
    let sum: f64 = text
        .lines()
        .filter(|l| l.starts_with("fulcrum_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(sum, sent.total as f64);
    assert!(
        !text.contains("circuit_breaker_state"),
        "breakers are off: no breaker series"
    );

    // a removed backend leaves the output
    lb.remove_server("web2", Duration::ZERO).unwrap();
    let text = metrics_text(&lb);
    assert!(!text.contains("backend=\"web2\""), "{text}");
    assert!(metrics_json(&lb, false)["servers"].get("web2").is_none());
}

#[test]
fn promtool_finds_nothing_to_lint() {
    if !tools_present(missing_program("promtool", PROMETHEUS_PACKAGE)) {
        return;
    }
    let b = backends(&[("web1", 0), ("web2", 2)]);
    let mut cfg = config(Strategy::LeastResponseTime, &[(&b[0], 1), (&b[1], 2)]);
    cfg.rate_limit = Some(RateLimitConfig::new(1000));
    let lb = start(cfg);
    for _ in 0..20 {
        get(lb.listen_addr(), "/");
    }
    let text = metrics_text(&lb);
    for family in [
        "fulcrum_requests_total",
        "fulcrum_request_duration_seconds",
        "fulcrum_upstream_duration_seconds",
        "fulcrum_backend_in_flight",
        "fulcrum_backend_health",
        "fulcrum_backend_up",
        "fulcrum_backend_weight",
        "fulcrum_backend_draining",
        "fulcrum_circuit_breaker_state",
        "fulcrum_circuit_breaker_trips_total",
        "fulcrum_retries_total",
        "fulcrum_retry_budget_exhausted_total",
        "fulcrum_rate_limited_requests_total",
        "fulcrum_client_connections",
        "fulcrum_build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing in\n{text}"
        );
    }

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(20)).expect("promtool timed out");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        status.success() && out.is_empty(),
        "promtool check metrics: {status}\n{out}\non:\n{text}"
    );
}

/// `sum(fulcrum_requests_total)` as Prometheus answers it, if it has a value yet.
fn prometheus_sum(prom: SocketAddr) -> Option<f64> {
    let r = request(
        prom,
        "GET",
        "/api/v1/query?query=sum(fulcrum_requests_total)",
        &[],
        None,
    )
    .ok()?;
    if r.status != 200 {
        return None;
    }
    let j: Value = serde_json::from_str(&r.body).ok()?;
    j["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Polls Prometheus (at most 30 s) until `sum(fulcrum_requests_total)` is `want`.
fn wait_for_sum(prom: SocketAddr, want: f64, scratch: &mut Scratch) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(status) = scratch.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{}", scratch.log());
        }
        last = prometheus_sum(prom).or(last);
        if last == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "Prometheus never saw {want} requests (last answer {last:?}):\n{}",
        scratch.log()
    );
}

#[test]
fn a_real_prometheus_scrapes_fulcrum() {
    if !tools_present(missing_program("prometheus", PROMETHEUS_PACKAGE)) {
        return;
    }
    let b = backends(&[("web1", 0), ("web2", 0)]);
    let lb = start(config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]));
    let first = 12;
    for _ in 0..first {
        assert_eq!(get(lb.listen_addr(), "/").status, 200);
    }

    let mut scratch = Scratch::new("prometheus");
    let config_file = scratch.dir.join("prometheus.yml");
    std::fs::write(
        &config_file,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: fulcrum\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: ['{}']\n",
            lb.admin_addr()
        ),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prom: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = std::fs::File::create(scratch.dir.join("prometheus.log")).unwrap();
    scratch.child = Some(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus"),
    );

    wait_for_sum(prom, f64::from(first), &mut scratch);

    // it keeps scraping: later requests show up too
    for _ in 0..5 {
        assert_eq!(get(lb.listen_addr(), "/").status, 200);
    }
    wait_for_sum(prom, f64::from(first + 5), &mut scratch);
    drop(scratch); // kills Prometheus, removes its data
}
