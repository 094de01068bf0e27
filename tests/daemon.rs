//! `fulcrum -d`: the built binary forks into the background and still serves, writes its access
//! log, answers `/metrics` and keeps its pid file (everything that needs a thread starts after
//! the fork).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::process::{alive, free_port, Scratch};
use common::*;
use fulcrum::demo::DemoBackend;

#[test]
fn a_daemon_serves_logs_and_reports() {
    let backend = DemoBackend::start("bg", Duration::ZERO).unwrap();
    let dir = Scratch::new("daemon");
    let (port, admin) = (free_port(), free_port());
    let (log, pid_file) = (dir.path("access.log"), dir.path("fulcrum.pid"));
    let yaml = format!(
        "port: {port}\nbind_address: 127.0.0.1\nadmin_address: 127.0.0.1:{admin}\n\
         access_log: {log}\nshutdown_timeout: 1s\n\
         pingora:\n  threads: 1\n  pid_file: {pid}\n  upgrade_sock: {sock}\n  error_log: {err}\n\
         backends:\n  - {{id: bg, url: \"{url}\"}}\n",
        log = log.display(),
        pid = pid_file.display(),
        sock = dir.path("upgrade.sock").display(),
        err = dir.path("error.log").display(),
        url = backend.url(),
    );
    let conf = dir.path("fulcrum.yaml");
    std::fs::write(&conf, yaml).unwrap();

    // the foreground process forks and exits; the daemon stays
    let status = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["-d", "-c"])
        .arg(&conf)
        .env_remove("RUST_LOG")
        .status()
        .unwrap();
    assert!(status.success(), "fulcrum -d exited with {status}");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &pid_file
        )
        .is_ok_and(|p| p.trim().parse::<u32>().is_ok())),
        "no pid file at {}",
        pid_file.display()
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    dir.watch(pid);
    assert!(alive(pid), "pid {pid} from the pid file is not running");

    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
            addr
        )
        .is_ok()),
        "the daemon does not listen on {addr}"
    );
    for i in 0..5 {
        let r = get(addr, &format!("/daemon/{i}"));
        assert_eq!((r.status, served_by(&r).as_str()), (200, "bg"));
    }

    // the access log is written by the daemon's own writer thread
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("/daemon/"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || lines() == 5),
        "access log has {} of 5 lines: {:?}",
        lines(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .find(|l| l.contains("/daemon/0"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (first["status"].as_u64(), first["backend"].as_str()),
        (Some(200), Some("bg"))
    );

    // metrics from the daemon count them
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let metrics = get(admin, "/metrics?format=json");
    assert_eq!(metrics.status, 200);
    let j: serde_json::Value = serde_json::from_str(&metrics.body).unwrap();
    assert!(j["total_requests"].as_u64().unwrap() >= 5, "{j}");
    assert_eq!(j["servers"]["bg"]["requests"].as_u64(), Some(5), "{j}");

    // SIGTERM stops it
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    assert!(
        wait_until(Duration::from_secs(20), || !alive(pid)),
        "the daemon did not exit after SIGTERM"
    );
}
