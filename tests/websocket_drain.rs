//! Open WebSockets and a graceful stop or upgrade of the built binary: the old process keeps
//! serving them while it drains and exits as soon as the last one closes, or at
//! `shutdown_timeout` at the latest.

mod common;

use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::instance::Instance;
use common::process::*;
use common::ws::*;
use tungstenite::WebSocket;

/// A config in front of `backend` with `shutdown_timeout`, and an upgrade socket and pid file
/// in the scratch directory of the [`Instance`] named `name`.
fn yaml(name: &str, port: u16, admin: u16, backend: &WsBackend, shutdown: &str) -> String {
    let dir = std::env::temp_dir().join(format!("fulcrum-{name}-{}", std::process::id()));
    format!(
        "port: {port}\nbind_address: 127.0.0.1\nadmin_address: 127.0.0.1:{admin}\n\
         logging_enabled: false\nshutdown_timeout: {shutdown}\n\
         pingora:\n  threads: 2\n  upgrade_sock: {sock}\n  pid_file: {pid}\n\
         backends:\n  - {{id: {id}, url: \"{url}\"}}\n",
        sock = dir.join("upgrade.sock").display(),
        pid = dir.join("fulcrum.pid").display(),
        id = backend.id(),
        url = backend.url()
    )
}

/// A WebSocket backend, Fulcrum (the [`Instance`] `name`) in front of it with
/// `shutdown_timeout`, and a WebSocket through it that has echoed once.
fn open(name: &str, shutdown: &str) -> (WsBackend, Instance, WebSocket<TcpStream>) {
    let b = WsBackend::start("ws");
    let fulcrum = Instance::start(name, |p, a| yaml(name, p, a, &b, shutdown));
    let mut ws = ws_connect(fulcrum.addr, "/chat");
    assert_eq!(echo(&mut ws, "before"), "before");
    (b, fulcrum, ws)
}

#[test]
fn a_stop_waits_for_an_open_websocket_and_ends_when_it_closes() {
    let (_b, mut fulcrum, mut ws) = open("ws-stop", "10s");

    let stopped = Instant::now();
    fulcrum.child.signal("-TERM");
    std::thread::sleep(Duration::from_millis(700));
    fulcrum.assert_alive("while a WebSocket was open");
    assert!(
        TcpStream::connect_timeout(&fulcrum.addr, Duration::from_secs(1)).is_err(),
        "the listener still accepts while draining"
    );
    assert_eq!(echo(&mut ws, "draining"), "draining", "{}", fulcrum.log());

    ws.close(None).unwrap();
    assert!(wait_closed(&mut ws, Duration::from_secs(5)).0);
    let closed = stopped.elapsed();
    let code = fulcrum.child.wait_exit(Duration::from_secs(15));
    let exited = stopped.elapsed();
    assert_eq!(code, Some(0), "{}", fulcrum.log());
    assert!(
        exited < closed + Duration::from_secs(1),
        "exited {:?} after the WebSocket closed (shutdown_timeout is 10 s)",
        exited - closed
    );
}

#[test]
fn a_websocket_left_open_ends_at_shutdown_timeout() {
    let (_b, mut fulcrum, mut ws) = open("ws-timeout", "2s");

    let stopped = Instant::now();
    fulcrum.child.signal("-TERM");
    let code = fulcrum.child.wait_exit(Duration::from_secs(15));
    let exited = stopped.elapsed();
    assert_eq!(code, Some(0), "{}", fulcrum.log());
    assert!(
        exited >= Duration::from_millis(1900) && exited < Duration::from_secs(4),
        "exited {exited:?} after SIGTERM with a WebSocket open (shutdown_timeout 2 s)"
    );
    assert!(
        wait_closed(&mut ws, Duration::from_secs(5)).0,
        "the WebSocket outlived the process"
    );
}

#[test]
fn an_upgrade_leaves_open_websockets_on_the_old_process_until_they_close() {
    let (_b, mut old, mut ws) = open("ws-upgrade", "30s");

    let log = std::fs::File::create(old.config.with_file_name("new.log")).unwrap();
    let mut new = Running(
        fulcrum()
            .arg("-u")
            .arg("-c")
            .arg(&old.config)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    old.child.signal("-QUIT");
    // the old process hands its listener over, accepts for pingora's 5 s more, then drains
    std::thread::sleep(Duration::from_secs(7));
    old.assert_alive("while its WebSocket was open");
    assert!(new.0.try_wait().unwrap().is_none(), "the new process died");
    let mut fresh = ws_connect(old.addr, "/chat");
    assert_eq!(echo(&mut fresh, "new"), "new");
    assert_eq!(echo(&mut ws, "still old"), "still old", "{}", old.log());

    ws.close(None).unwrap();
    assert!(wait_closed(&mut ws, Duration::from_secs(5)).0);
    let closed = Instant::now();
    let code = old.child.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", old.log());
    assert!(
        closed.elapsed() < Duration::from_secs(1),
        "the old process exited {:?} after its last WebSocket closed",
        closed.elapsed()
    );
    assert_eq!(echo(&mut fresh, "new again"), "new again");
    fresh.close(None).unwrap();
}
