//! TLS termination with real clients: curl (certificate per SNI name, HTTP/2 by ALPN, h2c),
//! `openssl s_client` (protocol versions, the certificate served without SNI, certificates
//! re-read by a reload), `h2load` (a multiplexed run). Certificates come from a test CA made
//! with rcgen; everything listens on 127.0.0.1.
//!
//! curl and openssl come with Debian; h2load is Debian's `nghttp2-client`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::process::Scratch;
use common::*;
use fulcrum::config::{LoadBalancerConfig, TlsCertificate};
use fulcrum::Strategy;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A test certificate authority.
struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "Fulcrum test CA");
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A leaf for `names` (CN = the first), written as `<stem>.pem` and `<stem>.key`.
    fn issue(&self, dir: &Scratch, stem: &str, names: &[&str]) -> TlsCertificate {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        // what a public CA issues: 90 days, with the issuer's key identifier
        let now = std::time::SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(90 * 86400)).into();
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let files = TlsCertificate {
            cert_file: dir.path(&format!("{stem}.pem")),
            key_file: dir.path(&format!("{stem}.key")),
        };
        std::fs::write(&files.cert_file, cert.pem()).unwrap();
        std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
        files
    }

    fn write(&self, dir: &Scratch) -> PathBuf {
        let path = dir.path("ca.pem");
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }
}

/// curl, openssl and (when `h2load`) h2load are there, or the test is skipped (fails in CI).
fn tools(h2load: bool) -> bool {
    let openssl_runs = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut missing: Vec<String> = Vec::new();
    missing.extend(missing_program("curl", "apt-get install curl"));
    if !openssl_runs {
        missing.push("`openssl` on PATH (apt-get install openssl)".into());
    }
    if h2load {
        missing.extend(missing_program("h2load", "apt-get install nghttp2-client"));
    }
    tools_present(missing)
}

/// A config with TLS on a free port: `a.test` as the default certificate, `*.wild.test` too.
fn tls_config(b: &fulcrum::demo::DemoBackend, ca: &TestCa, dir: &Scratch) -> LoadBalancerConfig {
    let a = ca.issue(dir, "a", &["a.test"]);
    let wild = ca.issue(dir, "wild", &["*.wild.test"]);
    let mut cfg = config(Strategy::RoundRobin, &[(b, 1)]);
    cfg.enable_ssl = true;
    cfg.ssl_cert_file = Some(a.cert_file);
    cfg.ssl_key_file = Some(a.key_file);
    cfg.tls_certificates = vec![wild];
    cfg.tls_listen_port = 0;
    cfg
}

/// `curl -s` with a 10 s limit and `args`, resolving `host` to 127.0.0.1.
fn curl(host: &str, port: u16, ca: &std::path::Path, args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(args)
        .output()
        .unwrap()
}

/// `openssl s_client` against `addr` with `args`, stdin closed; its output.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// The subject line of the certificate a handshake got.
fn subject(s_client_output: &str) -> String {
    s_client_output
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn certificates_are_chosen_by_sni_and_h2_is_negotiated() {
    if !tools(false) {
        return;
    }
    let dir = Scratch::new("tls-sni");
    let ca = TestCa::new();
    let ca_file = ca.write(&dir);
    let b = backends(&[("a", 0)]);
    let lb = start(tls_config(&b[0], &ca, &dir));
    let tls = lb.tls_addr().expect("TLS listener");
    let port = tls.port();

    // each name gets its own certificate: curl verifies chain and host name
    for host in ["a.test", "x.wild.test"] {
        let url = format!("https://{host}:{port}/debug/headers");
        let out = curl(host, port, &ca_file, &["-w", "\n%{http_version}", &url]);
        let body = text(&out);
        assert!(out.status.success(), "{host}: {out:?}");
        assert!(body.ends_with("\n2"), "{host}: HTTP/2 by ALPN: {body}");
        assert!(
            body.to_ascii_lowercase()
                .contains("x-forwarded-proto: https"),
            "{body}"
        );
    }
    // HTTP/1.1 when the client offers only that
    let url = format!("https://a.test:{port}/");
    let out = curl(
        "a.test",
        port,
        &ca_file,
        &[
            "--http1.1",
            "-w",
            "%{http_version}",
            "-o",
            "/dev/null",
            &url,
        ],
    );
    assert_eq!(text(&out), "1.1", "{out:?}");
    // a name no certificate has, and no SNI at all: the first certificate
    assert!(subject(&s_client(tls, &["-servername", "other.test"])).contains("a.test"));
    assert!(subject(&s_client(tls, &["-noservername"])).contains("a.test"));
    assert!(subject(&s_client(tls, &["-servername", "y.wild.test"])).contains("wild.test"));
    // the plain listener still speaks plain HTTP, and says so
    let r = get(lb.listen_addr(), "/debug/headers");
    assert!(
        r.body
            .to_ascii_lowercase()
            .contains("x-forwarded-proto: http\n")
            || r.body
                .to_ascii_lowercase()
                .contains("x-forwarded-proto: http\r"),
        "{}",
        r.body
    );
}

#[test]
fn only_tls_1_2_and_1_3_are_accepted() {
    if !tools(false) {
        return;
    }
    let dir = Scratch::new("tls-versions");
    let ca = TestCa::new();
    let b = backends(&[("a", 0)]);
    let lb = start(tls_config(&b[0], &ca, &dir));
    let tls = lb.tls_addr().unwrap();
    let ok = |flag: &str| {
        let out = s_client(tls, &[flag, "-servername", "a.test"]);
        out.contains("Cipher is") && !out.contains("Cipher is (NONE)")
    };
    assert!(ok("-tls1_3"), "TLS 1.3 refused");
    assert!(ok("-tls1_2"), "TLS 1.2 refused");
    for old in ["-tls1_1", "-tls1"] {
        let out = s_client(
            tls,
            &[
                old,
                "-servername",
                "a.test",
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ],
        );
        assert!(
            !out.contains("Cipher is") || out.contains("Cipher is (NONE)"),
            "{old} accepted: {out}"
        );
    }
    let alpn = s_client(tls, &["-alpn", "h2,http/1.1", "-servername", "a.test"]);
    assert!(alpn.contains("ALPN protocol: h2"), "{alpn}");
}

#[test]
fn a_reload_re_reads_the_certificates_and_open_connections_keep_working() {
    if !tools(false) {
        return;
    }
    let dir = Scratch::new("tls-reload");
    let ca = TestCa::new();
    let b = backends(&[("a", 0)]);
    let cfg = tls_config(&b[0], &ca, &dir);
    let lb = start(cfg.clone());
    let tls = lb.tls_addr().unwrap();
    let fingerprint = || {
        let pem = s_client(tls, &["-servername", "a.test", "-showcerts"]);
        let start = pem.find("-----BEGIN CERTIFICATE-----").unwrap();
        let end = pem.find("-----END CERTIFICATE-----").unwrap();
        pem[start..end].to_string()
    };
    let before = fingerprint();

    // a client on a kept-alive HTTP/1.1 connection through curl's one process would end with
    // it; an open TLS connection is held here by openssl itself
    let mut held = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &tls.to_string(),
            "-servername",
            "a.test",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut held_in = held.stdin.take().unwrap();
    // what openssl prints, read as it arrives, so each request is sent only after the answer
    // to the one before (two requests in one write would be pipelined, which is unsupported)
    let answers = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let answers = answers.clone();
        let mut out = held.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                answers
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let answered = |n: usize| {
        wait_until(Duration::from_secs(10), || {
            answers.lock().unwrap().matches("HTTP/1.1 200").count() >= n
        })
    };
    held_in
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    assert!(answered(1), "no answer before the reload");

    // same files, new contents
    ca.issue(&dir, "a", &["a.test"]);
    let report = lb.reload_config(cfg).expect("valid");
    assert!(report.needs_upgrade.is_empty(), "{report:?}");
    let after = fingerprint();
    assert_ne!(
        before, after,
        "the new certificate is served after the reload"
    );

    // the connection opened before the reload still answers
    held_in
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let both = answered(2);
    drop(held_in);
    let _ = held.kill();
    let _ = held.wait();
    let _ = reader.join();
    assert!(both, "{}", answers.lock().unwrap());
}

#[test]
fn plain_http_is_redirected_to_https_when_asked() {
    let dir = Scratch::new("tls-redirect");
    let ca = TestCa::new();
    let b = backends(&[("a", 0)]);
    let mut cfg = tls_config(&b[0], &ca, &dir);
    cfg.redirect_http_to_https = true;
    let lb = start(cfg);
    let port = lb.tls_addr().unwrap().port();
    let r = get(lb.listen_addr(), "/path?q=1");
    assert_eq!(r.status, 308, "{r:?}");
    let location = r.headers.get("location").cloned().unwrap_or_default();
    // the test client sends Host: the listener's address
    assert_eq!(location, format!("https://127.0.0.1:{port}/path?q=1"));
    assert_eq!(b[0].hits(), 0, "the backend never saw the plain request");
}

#[test]
fn bad_certificates_are_config_errors_naming_the_file() {
    let dir = Scratch::new("tls-errors");
    let ca = TestCa::new();
    let b = backends(&[("a", 0)]);
    let good = tls_config(&b[0], &ca, &dir);
    let other = ca.issue(&dir, "other", &["other.test"]);

    let mut missing = good.clone();
    missing.ssl_cert_file = Some(dir.path("nope.pem"));
    let mut mismatched = good.clone();
    mismatched.ssl_key_file = Some(other.key_file.clone());
    let mut not_pem = good.clone();
    std::fs::write(dir.path("junk.pem"), "hello").unwrap();
    not_pem.tls_certificates[0].cert_file = dir.path("junk.pem");
    let cases = [
        (missing, "ssl_cert_file: ", "nope.pem"),
        (mismatched, "ssl_key_file: ", "other.key"),
        (not_pem, "tls_certificates[0].cert_file: ", "junk.pem"),
    ];
    for (cfg, key, file) in cases {
        let err = match fulcrum::LoadBalancer::new(cfg) {
            Ok(_) => panic!("{key} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(key) && err.contains(file), "{key}: {err}");
    }
}

#[test]
fn h2c_and_http_1_1_share_the_plain_port() {
    if !tools(false) {
        return;
    }
    let b = backends(&[("a", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.h2c = true;
    cfg.client_header_timeout = Duration::from_secs(1);
    let lb = start(cfg);
    let url = format!("http://{}/", lb.listen_addr());
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2-prior-knowledge"])
        .args(["-w", "%{http_version}", "-o", "/dev/null", &url])
        .output()
        .unwrap();
    assert_eq!(text(&out), "2", "{out:?}");
    assert_eq!(
        get(lb.listen_addr(), "/").status,
        200,
        "HTTP/1.1 on the same port"
    );
    // a client that sends less than the preface's length and waits is closed
    let mut slow = TcpStream::connect(lb.listen_addr()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"GET / HTTP/1.0\r\n").unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after client_header_timeout, not {:?}",
        started.elapsed()
    );
}

#[test]
fn h2load_multiplexes_over_tls() {
    if !tools(true) {
        return;
    }
    let dir = Scratch::new("tls-h2load");
    let ca = TestCa::new();
    let b = backends(&[("a", 0)]);
    let mut cfg = tls_config(&b[0], &ca, &dir);
    cfg.rate_limit = None;
    let lb = start(cfg);
    let tls = lb.tls_addr().unwrap();
    let url = format!("https://{tls}/");
    // -m: streams in flight per connection (h2); HTTP/1.1 gets one request at a time per
    // connection (the downstream guard does not take pipelined requests: see the README)
    let run = |extra: &[&str]| {
        let out = Command::new("timeout")
            .args(["60", "h2load", "-n", "2000", "-c", "4"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        let text = text(&out);
        println!("h2load {extra:?}:\n{text}");
        text
    };
    let h2 = run(&["-m", "10"]);
    assert!(h2.contains("Application protocol: h2"), "{h2}");
    assert!(h2.contains("2000 succeeded, 0 failed, 0 errored"), "{h2}");
    let h1 = run(&["--h1", "-m", "1"]);
    assert!(h1.contains("2000 succeeded, 0 failed, 0 errored"), "{h1}");
}

/// `sslyze` on PATH, or the virtualenv CI installs it into.
fn sslyze() -> Option<PathBuf> {
    let venv = PathBuf::from("/opt/sslyze/bin/sslyze");
    if venv.exists() {
        return Some(venv);
    }
    let on_path = Command::new("sslyze")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    on_path.then(|| PathBuf::from("sslyze"))
}

#[test]
fn sslyze_finds_the_listener_compliant_with_mozilla_intermediate() {
    let Some(sslyze) = sslyze() else {
        let how = "`sslyze` (python3 -m venv /opt/sslyze && /opt/sslyze/bin/pip install sslyze)";
        tools_present([how.to_string()]);
        return;
    };
    let dir = Scratch::new("tls-sslyze");
    let ca = TestCa::new();
    let b = backends(&[("a", 0)]);
    let lb = start(tls_config(&b[0], &ca, &dir));
    let tls = lb.tls_addr().unwrap();
    let out = Command::new("timeout")
        .arg("120")
        .arg(&sslyze)
        .arg("--mozilla_config=intermediate")
        .arg("--certinfo_ca_file")
        .arg(ca.write(&dir))
        .arg(format!("a.test:{}{{127.0.0.1}}", tls.port()))
        .output()
        .unwrap();
    let report = text(&out);
    println!("{report}");
    assert!(out.status.success(), "sslyze: {report}");
    assert!(report.contains("OK - Compliant"), "{report}");
}
