//! The `fulcrum` binary: `-t`, usage errors, environment overrides, serving from a config file,
//! SIGTERM, and `--demo`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::process::*;
use common::*;
use fulcrum::demo::DemoBackend;

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run fulcrum");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn conf_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf")
}

#[test]
fn every_shipped_config_is_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir(conf_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let (code, out, err) = run(fulcrum().arg("-t").arg("-c").arg(&path));
            assert_eq!(code, 0, "{}: {out}{err}", path.display());
            assert!(out.contains("is valid"), "{out}");
            checked += 1;
        }
    }
    assert!(checked >= 1, "no config in conf/");
}

#[test]
fn invalid_configs_are_rejected_with_the_key_named() {
    let cases = [
        ("unknown.yaml", "strategyy: round_robin\n", "strategyy"),
        ("badstrategy.yaml", "strategy: fastest\n", "fastest"),
        (
            "badweight.yaml",
            "backends:\n  - {id: a, url: \"http://127.0.0.1:1\", weight: 0}\n",
            "weight",
        ),
        (
            "badduration.yaml",
            "health_check_interval: 30\n",
            "health_check_interval",
        ),
        // caught by the settings a start builds, which -t builds too
        (
            "sameaddress.yaml",
            "backends:\n  - {id: a, url: \"http://127.0.0.1:1\"}\n  - {id: b, url: \"http://127.0.0.1:1/\"}\n",
            "backends[1] (id \"b\"): url:",
        ),
        (
            "nohost.yaml",
            "backends:\n  - {id: a, url: \"http://no-such-host.invalid:80\"}\n",
            "backends[0] (id \"a\"): url: cannot resolve",
        ),
        (
            "pingora.yaml",
            "pingora:\n  threadz: 2\n",
            "threadz",
        ),
    ];
    for (name, yaml, key) in cases {
        let path = temp_file(name, yaml);
        let (code, out, err) = run(fulcrum().arg("-t").arg("-c").arg(&path));
        assert_ne!(code, 0, "{name} accepted: {out}");
        assert!(
            err.contains(key),
            "{name}: error does not name {key:?}: {err}"
        );
        let _ = std::fs::remove_file(path);
    }
    let (code, _, err) = run(fulcrum().args(["-t", "-c", "/nonexistent/fulcrum.yaml"]));
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/fulcrum.yaml"), "{err}");
}

/// Defect 5: shortening the health-check interval alone is valid; the timeout follows it.
#[test]
fn a_short_health_check_interval_alone_is_valid() {
    let backend = "backends:\n  - {id: a, url: \"http://127.0.0.1:1\"}\n";
    let path = temp_file(
        "short-interval.yaml",
        &format!("health_check_interval: 1s\n{backend}"),
    );
    let (code, out, err) = run(fulcrum().arg("-t").arg("-c").arg(&path));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is valid (1 backends"), "{out}");
    // A timeout the user set is still refused when longer than the interval.
    let (code, _, err) = run(fulcrum()
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .env("LB_HEALTH_CHECK_TIMEOUT", "5s"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("LB_HEALTH_CHECK_TIMEOUT"), "{err}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn environment_overrides_apply_and_bad_values_name_the_variable() {
    let conf = conf_dir().join("fulcrum.yaml");
    let (code, out, err) = run(fulcrum()
        .args(["-t", "-c"])
        .arg(&conf)
        .env("LB_STRATEGY", "power_of_two_choices"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("strategy power_of_two_choices"), "{out}");

    let (code, _, err) = run(fulcrum()
        .args(["-t", "-c"])
        .arg(&conf)
        .env("LB_PORT", "eighty"));
    assert_ne!(code, 0);
    assert!(err.contains("LB_PORT"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [&[][..], &["--bogus"][..], &["-c"][..]] {
        let (code, _, err) = run(fulcrum().args(args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("Usage: fulcrum"), "{err}");
    }
    let (code, out, _) = run(fulcrum().arg("--help"));
    assert_eq!(code, 0);
    assert!(out.contains("--demo"));
}

#[test]
fn serves_from_a_config_file_and_stops_on_sigterm() {
    let backend = DemoBackend::start("filebacked", Duration::ZERO).unwrap();
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "port: {port}\nbind_address: 127.0.0.1\nadmin_address: 127.0.0.1:{admin}\n\
         logging_enabled: false\nshutdown_timeout: 1s\npingora:\n  threads: 1\n\
         backends:\n  - {{id: filebacked, url: \"{}\"}}\n",
        backend.url()
    );
    let path = temp_file("serve.yaml", &yaml);
    let mut child = Running::start(&path);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    assert_eq!(served_by(&get(addr, "/")), "filebacked");
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    assert!(wait_until(Duration::from_secs(5), || get(admin, "/health")
        .status
        == 200));
    // draining and readiness during a stop: tests/drain.rs
    child.signal("-TERM");
    let code = child.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "fulcrum did not exit cleanly on SIGTERM");
    let _ = std::fs::remove_file(path);
}

#[test]
fn demo_shows_the_weighted_distribution() {
    let (port, admin) = (free_port(), free_port());
    let mut child = Running(
        fulcrum()
            .arg("--demo")
            .env("LB_PORT", port.to_string())
            .env("LB_ADMIN_ADDRESS", format!("127.0.0.1:{admin}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    let seq = sequence(addr, 12);
    let c = counts(&seq);
    assert_eq!(
        (c["web1"], c["web2"], c["web3"]),
        (6, 4, 2),
        "weights 3/2/1 over two periods: {seq:?}"
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    assert!(wait_until(Duration::from_secs(5), || get(admin, "/health")
        .status
        == 200));

    child.signal("-INT");
    assert_eq!(child.wait_exit(Duration::from_secs(10)), Some(0));
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        out.contains(&format!("curl -s http://127.0.0.1:{port}/")),
        "{out}"
    );
}
