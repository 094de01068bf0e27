//! Automatic certificates end to end against Debian's `pebble`, the ACME test CA, all on
//! 127.0.0.1: Fulcrum obtains a certificate for two names over HTTP-01 answered on its plain
//! port (with `redirect_http_to_https` and a 1 request/s rate limit on, which the answers must
//! get past), serves it by SNI (`openssl s_client` sees pebble's issuer), stores it (key 0600),
//! keeps it across a reload, shows it in `/health` and the expiry gauge, and after a restart
//! with pebble gone serves it from the files at once. With nothing stored and no CA, the TLS
//! listener refuses handshakes and plain HTTP still works.
//!
//! pebble's directory is served over TLS with a certificate from a CA made here (Debian's
//! package does not ship pebble's test certificates); Fulcrum trusts it through `acme.ca_file`.
//! `pebble-challtestsrv` (same package) is the DNS server pebble resolves the names with: every
//! name is 127.0.0.1. Tools: `pebble`, `pebble-challtestsrv` (apt-get install pebble), openssl.

mod common;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::{free_port, Scratch};
use common::*;
use fulcrum::config::{AcmeConfig, LoadBalancerConfig, RateLimitConfig};
use fulcrum::Strategy;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

const WWW: &str = "www.fulcrum.test";
const API: &str = "api.fulcrum.test";

/// Whether `program` is an executable file on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn tools() -> bool {
    let mut missing = Vec::new();
    for p in ["pebble", "pebble-challtestsrv"] {
        if !on_path(p) {
            missing.push(format!("`{p}` on PATH (apt-get install pebble)"));
        }
    }
    if !on_path("openssl") {
        missing.push("`openssl` on PATH (apt-get install openssl)".into());
    }
    tools_present(missing)
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP port free right now on 127.0.0.1.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 10 s for `addr` to accept TCP connections.
fn wait_listening(addr: SocketAddr, what: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "{what} does not listen on {addr}"
    );
}

/// pebble with its DNS server, validating HTTP-01 on `http_port`; its directory URL and the
/// CA file its TLS certificate chains to.
struct Pebble {
    directory_url: String,
    ca_file: PathBuf,
    _daemons: [Daemon; 2],
}

impl Pebble {
    fn start(dir: &Scratch, http_port: u16) -> Self {
        // pebble's own TLS certificate, for 127.0.0.1, from a CA of ours
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ca.distinguished_name
            .push(DnType::CommonName, "pebble directory test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let ca_file = dir.path("pebble-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(dir.path("pebble.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path("pebble.key"), key.serialize_pem()).unwrap();

        let (acme_port, mgmt_port, tls_port) = (free_port(), free_port(), free_port());
        let (dns_port, dns_mgmt_port) = (free_udp_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.path("pebble.pem"),
            "privateKey": dir.path("pebble.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        let config_file = dir.path("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();

        let log = |name: &str| std::fs::File::create(dir.path(name)).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt_port}")])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        let dns = Daemon(dns);
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // validate for real, without pebble's random sleeps; every nonce good
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble");
        let pebble = Daemon(pebble);
        wait_listening(
            SocketAddr::from(([127, 0, 0, 1], dns_mgmt_port)),
            "pebble-challtestsrv",
        );
        wait_listening(SocketAddr::from(([127, 0, 0, 1], acme_port)), "pebble");
        Self {
            directory_url: format!("https://127.0.0.1:{acme_port}/dir"),
            ca_file,
            _daemons: [pebble, dns],
        }
    }
}

/// A self-signed certificate for `default.test`, written to `dir`.
fn default_certificate(dir: &Scratch) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["default.test".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "default.test");
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.path("default.pem"), dir.path("default.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// `openssl s_client -servername name` (or no SNI) against `addr`: the issuer and subject
/// lines and the whole output.
fn handshake(addr: SocketAddr, name: Option<&str>) -> (String, String, String) {
    let sni = match name {
        Some(n) => ["-servername", n],
        None => ["-noservername", ""],
    };
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(sni.iter().filter(|a| !a.is_empty()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or("")
            .to_string()
    };
    (line("issuer="), line("subject="), text)
}

/// The `tls_certificates` entry of `/health` with `source`, if any.
fn health_certificate(admin: SocketAddr, source: &str) -> Option<serde_json::Value> {
    let r = get(admin, "/health");
    let json: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    json["tls_certificates"]
        .as_array()?
        .iter()
        .find(|c| c["source"] == source)
        .cloned()
}

/// Seconds since 1970 of the leaf's notAfter in a PEM chain.
fn not_after(chain: &Path) -> u64 {
    let pem = std::fs::read(chain).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    u64::try_from(cert.validity().not_after.timestamp()).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn certificates_are_obtained_from_pebble_served_stored_and_reloaded() {
    if !tools() {
        return;
    }
    let started = Instant::now();
    let dir = Scratch::new("acme");
    let plain_port = free_port();
    let pebble = Pebble::start(&dir, plain_port);
    let storage = dir.path("acme");
    let b = backends(&[("web", 0)]);
    let (cert, key) = default_certificate(&dir);
    let mut cfg: LoadBalancerConfig = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.port = plain_port;
    cfg.enable_ssl = true;
    cfg.tls_listen_port = 0;
    cfg.ssl_cert_file = Some(cert);
    cfg.ssl_key_file = Some(key);
    // the challenge answers come before both
    cfg.redirect_http_to_https = true;
    cfg.rate_limit = Some(RateLimitConfig {
        requests_per_second: 1,
        burst: 1,
    });
    let mut acme = AcmeConfig::new(vec![WWW.into(), API.into()], &storage);
    acme.directory_url = pebble.directory_url.clone();
    acme.email = Some("ops@example.com".into());
    acme.ca_file = Some(pebble.ca_file.clone());
    cfg.acme = Some(acme);
    cfg.validate().expect("valid config");

    let lb = start(cfg.clone());
    let tls = lb.tls_addr().expect("TLS listener");
    let source = format!("acme:{WWW}");
    let obtained = wait_until(Duration::from_secs(30), || {
        health_certificate(lb.admin_addr(), &source).is_some()
    });
    assert!(
        obtained,
        "no certificate from pebble within 30 s; pebble's log:\n{}{}",
        std::fs::read_to_string(dir.path("pebble.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.path("pebble.err")).unwrap_or_default()
    );
    let obtained_after = started.elapsed();

    // served by SNI for both names, issued by pebble; other names get the configured default
    for name in [WWW, API] {
        let (issuer, _, out) = handshake(tls, Some(name));
        assert!(issuer.contains("Pebble Intermediate CA"), "{name}: {out}");
    }
    let (issuer, subject, out) = handshake(tls, Some("other.test"));
    assert!(
        subject.contains("default.test") && !issuer.contains("Pebble"),
        "{out}"
    );
    // an unknown token is not answered by Fulcrum: it goes on to the redirect
    let r = get(
        lb.listen_addr(),
        "/.well-known/acme-challenge/unknown-token",
    );
    assert_eq!(r.status, 308, "{r:?}");

    // stored: chain and key (0600), the account (0600), nothing left aside
    let chain = storage.join(format!("{WWW}.pem"));
    let key_file = storage.join(format!("{WWW}.key"));
    assert_eq!(mode(&key_file), 0o600);
    assert_eq!(mode(&storage.join("account.json")), 0o600);
    assert_eq!(mode(&storage), 0o700);
    let names: Vec<String> = std::fs::read_dir(&storage)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

    // /health and the gauge agree with the stored leaf
    let expiry = not_after(&chain);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry > now + 30 * 86_400,
        "pebble's certificate expires at {expiry}"
    );
    let entry = health_certificate(lb.admin_addr(), &source).unwrap();
    // the certificate's own names, in its order (pebble sorts them)
    let names: Vec<&str> = entry["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [API, WWW], "{entry}");
    let metrics = get(lb.admin_addr(), "/metrics").body;
    let series = format!(
        "fulcrum_tls_certificate_expiry_timestamp_seconds{{cert=\"{source}\",names=\"{}\"}} ",
        names.join(",")
    );
    let value: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(value as u64, expiry);
    assert!(
        metrics.contains("fulcrum_tls_certificate_expiry_timestamp_seconds{cert=\""),
        "the configured certificate has its series too"
    );

    // a reload re-reads the configured files and keeps the ACME certificate
    lb.reload_config(cfg.clone()).expect("reload");
    assert!(health_certificate(lb.admin_addr(), &source).is_some());
    let (issuer, _, out) = handshake(tls, Some(WWW));
    assert!(
        issuer.contains("Pebble Intermediate CA"),
        "after a reload: {out}"
    );
    lb.stop();

    // restart with pebble gone and only ACME certificates: served from the files at once
    drop(pebble);
    let stored_at = std::fs::metadata(&chain).unwrap().modified().unwrap();
    let mut only_acme = cfg.clone();
    only_acme.ssl_cert_file = None;
    only_acme.ssl_key_file = None;
    only_acme.port = 0;
    let lb = start(only_acme.clone());
    let tls = lb.tls_addr().unwrap();
    for name in [Some(WWW), None] {
        let (issuer, _, out) = handshake(tls, name);
        assert!(
            issuer.contains("Pebble Intermediate CA"),
            "{name:?} after a restart: {out}"
        );
    }
    assert!(health_certificate(lb.admin_addr(), &source).is_some());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::metadata(&chain).unwrap().modified().unwrap(),
        stored_at,
        "a stored certificate far from expiry is not ordered again"
    );
    lb.stop();

    // nothing stored and no CA: handshakes are refused, plain HTTP works
    let mut empty = only_acme;
    if let Some(a) = empty.acme.as_mut() {
        a.storage_dir = dir.path("empty");
    }
    empty.redirect_http_to_https = false;
    let lb = start(empty);
    let (issuer, _, out) = handshake(lb.tls_addr().unwrap(), Some(WWW));
    assert!(
        issuer.is_empty(),
        "no certificate yet, yet one was served: {out}"
    );
    assert!(out.contains("alert"), "{out}");
    let r = get(lb.admin_addr(), "/health");
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(json["tls_certificates"], serde_json::json!([]));
    assert_eq!(get(lb.listen_addr(), "/").status, 200);
    lb.stop();
    eprintln!(
        "acme: certificate from pebble {:.1} s after start; whole test {:.1} s",
        obtained_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
