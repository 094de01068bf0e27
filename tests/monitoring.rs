//! The Prometheus side shipped in `conf/`: `conf/prometheus/alerts.yml` passes
//! `promtool check rules` and its unit tests (`alerts_test.yml`), and `conf/grafana/fulcrum.json`
//! is a well-formed dashboard whose queries parse as PromQL. Every query of both, dashboard
//! panels and template variables included, names only metrics, labels and label values that a
//! real Fulcrum exports (checked against a real scrape of `/metrics`).
//!
//! `promtool` comes from Debian's `prometheus` package. Without it the tests that need it are
//! skipped with a notice `cargo test` shows, or fail when `CI` is set (`common::tools_present`).

mod common;
#[path = "monitoring/promql.rs"]
mod promql;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use fulcrum::Strategy;
use promql::{selectors, tokenize, Exposition, Token};
use serde_json::Value;

/// How to get `promtool`.
const PROMETHEUS_PACKAGE: &str = "apt-get install -y --no-install-recommends prometheus";

/// A file of the repository.
fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn dashboard() -> Value {
    let path = repo_file("conf/grafana/fulcrum.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// `promtool args...` with a 30 s limit: whether it succeeded, and what it printed.
fn promtool(args: &[&str]) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    }
    let readers = [
        drain(child.stdout.take().expect("stdout")),
        drain(child.stderr.take().expect("stderr")),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("promtool {args:?} ran over 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect::<Vec<_>>()
        .join("");
    (status.success(), out)
}

/// Every query of the dashboard with where it is: each panel target's `expr` (rows' nested
/// panels included) and each query variable's query.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_default();
                out.push((
                    format!("panel {title:?} target {}", t["refId"]),
                    expr.into(),
                ));
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            out.push((
                format!("variable {}", v["name"]),
                q.unwrap_or_default().into(),
            ));
        }
    }
    out
}

/// Every rule expression of `conf/prometheus/alerts.yml`, with the rule's name.
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("conf/prometheus/alerts.yml")).expect("read");
    let y: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts.yml is YAML");
    let mut out = Vec::new();
    for g in y["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
            out.push((name.to_string(), r["expr"].as_str().expect("expr").into()));
        }
    }
    out
}

/// The selector of `label_values(selector, label)` and the label, if `q` is one.
fn label_values(q: &str) -> Option<(&str, &str)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (sel, label) = inner.rsplit_once(',')?;
    Some((sel.trim(), label.trim()))
}

/// What in these queries does not match the scrape, one line per problem.
fn problems(scrape: &Exposition, queries: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (at, q) in queries {
        let mut found = scrape.problems(q);
        if let Some((sel, label)) = label_values(q) {
            let metric = selectors(sel).ok().and_then(|s| s.first().cloned());
            if let Some(m) = metric.filter(|m| !scrape.has_label(&m.metric, label)) {
                found.push(format!("{} has no label {label}", m.metric));
            }
        }
        out.extend(found.into_iter().map(|p| format!("{at}: {p}")));
    }
    out
}

/// Starts a Fulcrum with breakers on (the default) and TLS on (a self-signed certificate, so
/// the certificate expiry gauge is there) and returns its `/metrics` text.
fn real_scrape() -> String {
    let b = backends(&[("web1", 0), ("web2", 0)]);
    let dir = common::process::Scratch::new("monitoring-tls");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["fulcrum.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.enable_ssl = true;
    cfg.tls_listen_port = 0;
    cfg.ssl_cert_file = Some(dir.path("cert.pem"));
    cfg.ssl_key_file = Some(dir.path("key.pem"));
    std::fs::write(dir.path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path("key.pem"), key.serialize_pem()).unwrap();
    let lb = start(cfg);
    for _ in 0..4 {
        assert_eq!(get(lb.listen_addr(), "/").status, 200);
    }
    let r = get(lb.admin_addr(), "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    if !tools_present(missing_program("promtool", PROMETHEUS_PACKAGE)) {
        return;
    }
    let rules = repo_file("conf/prometheus/alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(
        ok && out.contains("SUCCESS"),
        "promtool check rules:\n{out}"
    );
    let tests = repo_file("conf/prometheus/alerts_test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");

    // the alerts the issues ask for are there
    let names: Vec<String> = alert_exprs().into_iter().map(|(n, _)| n).collect();
    for want in [
        "FulcrumBackendDown",
        "FulcrumCircuitBreakerOpen",
        "FulcrumHighErrorRatio",
        "FulcrumRetryBudgetExhausted",
        "FulcrumHighLatencyP99",
        "FulcrumCertificateExpiresSoon",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    // and every one of them has a test in alerts_test.yml
    let tests_text = std::fs::read_to_string(tests).unwrap();
    for n in &names {
        assert!(
            tests_text.contains(&format!("alertname: {n}\n")),
            "{n} has no test"
        );
    }
}

#[test]
fn dashboard_and_alerts_name_only_what_a_real_fulcrum_exports() {
    let scrape = Exposition::parse(&real_scrape()).expect("parse the scrape");
    let dash = dashboard_queries(&dashboard());
    assert!(dash.len() >= 20, "too few queries found: {dash:?}");
    let alerts = alert_exprs();
    assert!(alerts.len() >= 5, "{alerts:?}");
    for queries in [&dash, &alerts] {
        let found = problems(&scrape, queries);
        assert!(
            found.is_empty(),
            "{}\nthe scrape has: {:?}",
            found.join("\n"),
            scrape.names()
        );
    }

    // the same check would catch a misspelt metric in a panel, a bare histogram name, a
    // misspelt label value and a label the metric does not have
    let mut d = dashboard();
    let target = &mut d["panels"][1]["targets"][0]["expr"];
    let expr = target.as_str().unwrap().to_string();
    assert!(expr.contains("fulcrum_requests_total"), "{expr}");
    *target = expr
        .replace("fulcrum_requests_total", "fulcrum_request_total")
        .into();
    let found = problems(&scrape, &dashboard_queries(&d));
    assert!(
        found
            .iter()
            .any(|p| p.ends_with("unknown metric fulcrum_request_total")),
        "{found:?}"
    );
    for (bad, want) in [
        (
            "rate(fulcrum_upstream_duration_seconds[5m])",
            "unknown metric fulcrum_upstream_duration_seconds",
        ),
        (
            "fulcrum_circuit_breaker_state{state=\"half-open\"}",
            "no fulcrum_circuit_breaker_state{state=\"half-open\"} in the scrape",
        ),
        (
            "rate(fulcrum_requests_total{code_class=~\"5xx|err\"}[1m])",
            "no fulcrum_requests_total{code_class=\"err\"} in the scrape",
        ),
        (
            "fulcrum_backend_up{server=\"web1\"}",
            "fulcrum_backend_up has no label server",
        ),
        ("sum(rate(http_requests_total[5m]))", "no fulcrum_ metric"),
    ] {
        let found = problems(&scrape, &[("test".into(), bad.into())]);
        assert!(found.iter().any(|p| p.contains(want)), "{bad}: {found:?}");
    }
    let found = problems(
        &scrape,
        &[(
            "v".into(),
            "label_values(fulcrum_backend_up, server)".into(),
        )],
    );
    assert_eq!(found, ["v: fulcrum_backend_up has no label server"]);
}

#[test]
fn the_tokenizer_skips_strings_comments_and_variables() {
    let sels = selectors(
        "sum by (backend) (rate(fulcrum_requests_total{backend=~\"$backend\", \
         code_class=\"fulcrum_fake\"}[$__rate_interval])) # fulcrum_commented\n\
         / on() group_left ${fulcrum_variable} fulcrum_client_connections",
    )
    .unwrap();
    let names: Vec<&str> = sels.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(
        names,
        ["fulcrum_requests_total", "fulcrum_client_connections"]
    );
    let m = &sels[0].matchers;
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].label.as_str(), m[0].op.as_str()), ("backend", "=~"));
    assert_eq!(m[0].value, None, "a variable is no literal value");
    assert_eq!(m[1].value.as_deref(), Some("fulcrum_fake"));
    assert_eq!(
        tokenize("a!~'x\\'y' 5m:1m").unwrap(),
        [
            Token::Ident("a".into()),
            Token::Punct("!~".into()),
            Token::Str("x'y".into()),
            Token::Number("5m".into()),
            Token::Punct(":".into()),
            Token::Number("1m".into()),
        ]
    );
    assert!(tokenize("fulcrum_x{a=\"b}").is_err());
    assert!(selectors("fulcrum_x{a=}").is_err());
}

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 39), "{d}");
    assert_eq!(d["uid"], "fulcrum");
    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").expect("a datasource variable");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&"datasource".into(), &"prometheus".into())
    );
    let backend = var("backend").expect("a backend variable");
    assert!(backend["query"]["query"]
        .as_str()
        .is_some_and(|q| q.starts_with("label_values(") && q.ends_with(", backend)")));
    assert_eq!(backend["includeAll"], true);

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = std::collections::BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{title}: id reused"
        );
        let g = &p["gridPos"];
        let b = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
        assert!(b[0] + b[2] <= 24 && b[2] > 0 && b[3] > 0, "{title}: {g}");
        for (other, o) in &boxes {
            let apart = b[0] + b[2] <= o[0]
                || o[0] + o[2] <= b[0]
                || b[1] + b[3] <= o[1]
                || o[1] + o[3] <= b[1];
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title.clone(), b));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }
}

/// `expr` with Grafana's variables replaced: interval ones by `5m`, the others (always in
/// label values here) by `x`.
fn without_variables(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => braced.split_once('}').unwrap_or((braced, "")),
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                after.split_at(end)
            }
        };
        out.push_str(if name.starts_with("__") { "5m" } else { "x" });
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_dashboard_queries_parse_as_promql() {
    assert_eq!(
        without_variables("rate(m{a=~\"$a\",b=\"${b}\"}[$__rate_interval])"),
        "rate(m{a=~\"x\",b=\"x\"}[5m])"
    );
    if !tools_present(missing_program("promtool", PROMETHEUS_PACKAGE)) {
        return;
    }
    // promtool parses every expression of a rule file: make each query a recording rule
    let rules: Vec<Value> = dashboard_queries(&dashboard())
        .iter()
        .map(|(_, q)| label_values(q).map_or(q.as_str(), |(sel, _)| sel))
        .enumerate()
        .map(|(i, q)| {
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": without_variables(q)})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = TempDir(std::env::temp_dir().join(format!(
        "fulcrum-dashboard-rules-{}-{nanos}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("dashboard.yml");
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let (ok, out) = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(
        ok && out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "promtool check rules on the dashboard's queries:\n{out}"
    );

    // a broken query would be caught
    let broken = dir.0.join("broken.yml");
    std::fs::write(
        &broken,
        "groups:\n  - name: b\n    rules:\n      - record: b:x\n        expr: sum(rate(fulcrum_retries_total[5m])\n",
    )
    .unwrap();
    let (ok, out) = promtool(&["check", "rules", broken.to_str().unwrap()]);
    assert!(!ok, "{out}");
}
