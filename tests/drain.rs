//! A graceful stop of the built binary ends when the work does: SIGTERM closes the listener and
//! turns `/ready` to 503, requests in flight finish, and the process exits as soon as nothing
//! is left (or at `shutdown_timeout`), not after a fixed grace period.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use fulcrum::demo::DemoBackend;

/// Starts the binary in front of `backend` with `shutdown_timeout: 10s`; returns it with its
/// traffic and admin addresses.
fn start(backend: &DemoBackend, name: &str) -> (Running, SocketAddr, SocketAddr) {
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "port: {port}\nbind_address: 127.0.0.1\nadmin_address: 127.0.0.1:{admin}\n\
         logging_enabled: false\nshutdown_timeout: 10s\npingora:\n  threads: 2\n\
         backends:\n  - {{id: {id}, url: \"{url}\"}}\n",
        id = backend.id(),
        url = backend.url()
    );
    let child = Running::start(&temp_file(name, &yaml));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_listening(addr);
    wait_listening(admin);
    (child, addr, admin)
}

#[test]
fn an_idle_instance_stops_at_once() {
    let backend = DemoBackend::start("idle", Duration::ZERO).unwrap();
    let (mut child, addr, _) = start(&backend, "idle.yaml");
    assert_eq!(get(addr, "/").status, 200);
    // a client that keeps its connection open, idle, does not hold the stop up
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(kept.read(&mut buf).unwrap() > 0);

    let stopped = Instant::now();
    child.signal("-TERM");
    let code = child.wait_exit(Duration::from_secs(15));
    let took = stopped.elapsed();
    println!("idle stop: exited {took:?} after SIGTERM");
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_secs(1),
        "an idle stop took {took:?} (shutdown_timeout is 10 s)"
    );
}

#[test]
fn a_slow_request_finishes_then_the_process_exits() {
    let backend = DemoBackend::start("slow", Duration::from_secs(2)).unwrap();
    let (mut child, addr, admin) = start(&backend, "slow.yaml");
    let mut probe = TcpStream::connect(admin).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(ready_status(&mut probe), 200);

    let in_flight = std::thread::spawn(move || get(addr, "/slow"));
    assert!(
        wait_until(Duration::from_secs(5), || backend.max_concurrent() >= 1),
        "the slow request never reached the backend"
    );
    let stopped = Instant::now();
    child.signal("-TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ready_status(&mut probe), 503, "/ready while draining");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the listener still accepts while draining"
    );

    let r = in_flight.join().unwrap();
    let answered = stopped.elapsed();
    assert_eq!((r.status, served_by(&r).as_str()), (200, "slow"));
    let code = child.wait_exit(Duration::from_secs(15));
    let exited = stopped.elapsed();
    println!(
        "slow request: answered {answered:?} after SIGTERM, process exited {exited:?} after it"
    );
    assert_eq!(code, Some(0));
    assert!(
        exited >= answered.saturating_sub(Duration::from_millis(50)),
        "exited ({exited:?}) before the request was answered ({answered:?})"
    );
    assert!(
        exited < answered + Duration::from_secs(1),
        "exited {:?} after the last answer (shutdown_timeout is 10 s)",
        exited - answered
    );
}
