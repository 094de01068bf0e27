//! Tests of backend specs: URLs, weights, TLS and protocol fields, each error naming its field.

use super::*;

type UrlCase<'a> = (&'a str, Result<(&'a str, u16), &'a str>);

#[test]
fn parses_urls() {
    let cases: &[UrlCase] = &[
        ("http://127.0.0.1:8001", Ok(("127.0.0.1", 8001))),
        ("http://127.0.0.1:8001/", Ok(("127.0.0.1", 8001))),
        ("HTTP://10.0.0.1", Ok(("10.0.0.1", 80))),
        ("http://[::1]:9000", Ok(("::1", 9000))),
        (
            "http://web1.example.com:8001",
            Ok(("web1.example.com", 8001)),
        ),
        ("127.0.0.1:8001", Err("not a URL")),
        ("https://a:1", Ok(("a", 1))),
        ("HTTPS://backend.example", Ok(("backend.example", 443))),
        ("https://[::1]/", Ok(("::1", 443))),
        ("ftp://a:1", Err("scheme must be http or https")),
        ("http://a:1/path", Err("no path")),
        ("http://a:0", Err("invalid port")),
        ("http://a:99999", Err("invalid port")),
        ("http://:80", Err("empty host")),
        ("http://", Err("no host")),
        ("http://[::1", Err("unclosed")),
    ];
    for (url, want) in cases {
        match (UpstreamUrl::parse(url), want) {
            (Ok(u), Ok((host, port))) => {
                assert_eq!((u.host.as_str(), u.port), (*host, *port), "{url}")
            }
            (Err(e), Err(part)) => assert!(e.contains(part), "{url}: {e}"),
            (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn validates_fields_and_names_them() {
    let ok = BackendServer::new("web-1.a_b", "http://127.0.0.1:1");
    assert_eq!(ok.validate(), Ok("127.0.0.1:1".parse().unwrap()));
    let cases = [
        (
            BackendServer::new("", "http://127.0.0.1:1"),
            "id",
            "must not be empty",
        ),
        (
            BackendServer::new("a b", "http://127.0.0.1:1"),
            "id",
            "\"a b\"",
        ),
        (ok.clone().with_weight(0), "weight", "must be between 1"),
        (
            ok.clone().with_weight(MAX_WEIGHT + 1),
            "weight",
            "must be between 1",
        ),
        (BackendServer::new("a", "nope"), "url", "not a URL"),
    ];
    for (server, field, reason) in cases {
        let err = server.validate().unwrap_err();
        assert_eq!(err.field, field, "{server:?}");
        assert!(err.reason.contains(reason), "{server:?}: {err}");
        assert!(err.to_string().starts_with(&format!("{field}: ")));
    }
    let spec = BackendSpec::resolve(ok.clone()).unwrap();
    assert_eq!((spec.id(), spec.addr().port()), ("web-1.a_b", 1));
    assert!(!spec.peer().settings().tls);
    assert_eq!(Weight::new(MAX_WEIGHT).unwrap().get(), MAX_WEIGHT);
}

fn https(f: impl FnOnce(&mut BackendServer)) -> BackendServer {
    let mut server = BackendServer::new("s", "https://127.0.0.1:8443");
    f(&mut server);
    server
}

#[test]
fn tls_settings_are_checked_and_name_their_key() {
    let http = |f: fn(&mut BackendServer)| {
        let mut server = BackendServer::new("p", "http://127.0.0.1:1");
        f(&mut server);
        server
    };
    let cases = [
        (
            http(|s| s.tls_verify = false),
            "tls_verify",
            "only applies to https",
        ),
        (
            http(|s| s.ca_file = Some("/etc/ca.pem".into())),
            "ca_file",
            "only applies to https",
        ),
        (
            https(|s| s.ca_file = Some("".into())),
            "ca_file",
            "must not be empty",
        ),
        (
            https(|s| {
                s.ca_file = Some("/etc/ca.pem".into());
                s.tls_verify = false;
            }),
            "ca_file",
            "no effect with tls_verify: false",
        ),
        (
            https(|s| s.ca_file = Some("/nonexistent/ca.pem".into())),
            "ca_file",
            "/nonexistent/ca.pem: cannot read",
        ),
    ];
    for (server, field, reason) in cases {
        let err = BackendSpec::resolve(server.clone()).unwrap_err();
        assert_eq!(err.field, field, "{server:?}");
        assert!(err.reason.contains(reason), "{server:?}: {err}");
    }
    let h2c = http(|s| s.protocol = UpstreamProtocol::H2);
    assert_eq!(
        BackendSpec::resolve(h2c)
            .unwrap()
            .peer()
            .settings()
            .protocol,
        UpstreamProtocol::H2
    );
}

#[test]
fn https_backends_get_sni_verification_and_their_ca() {
    let spec = BackendSpec::resolve(https(|_| ())).unwrap();
    let peer = spec.peer().settings();
    assert!(peer.tls && peer.verify && peer.ca.is_none());
    assert_eq!(peer.sni, "127.0.0.1");
    let insecure = BackendSpec::resolve(https(|s| s.tls_verify = false)).unwrap();
    assert!(!insecure.peer().settings().verify);
    assert_ne!(spec, insecure, "a changed tls_verify is another spec");

    let dir = std::env::temp_dir().join(format!("fulcrum-spec-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ca.pem");
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&file, params.self_signed(&key).unwrap().pem()).unwrap();
    let with_ca = BackendSpec::resolve(https(|s| s.ca_file = Some(file.clone()))).unwrap();
    assert_eq!(
        with_ca.peer().settings().ca.as_ref().map(|c| c.len()),
        Some(1)
    );
    std::fs::write(&file, "not a certificate").unwrap();
    let err = BackendSpec::resolve(https(|s| s.ca_file = Some(file.clone()))).unwrap_err();
    assert_eq!(err.field, "ca_file");
    assert!(err.reason.contains("no PEM certificate"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn new_keys_round_trip_and_defaults_stay_unwritten() {
    let plain = serde_json::to_value(BackendServer::new("a", "http://h:1")).unwrap();
    assert!(plain.get("protocol").is_none() && plain.get("tls_verify").is_none());
    let yaml = "id: a\nurl: https://h\nprotocol: h2\ntls_verify: false\n";
    let server: BackendServer = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(server.protocol, UpstreamProtocol::H2);
    assert!(!server.tls_verify);
    let err =
        serde_yaml::from_str::<BackendServer>("id: a\nurl: http://h\nprotocol: h3\n").unwrap_err();
    assert!(err.to_string().contains("expected h1 or h2"), "{err}");
}
