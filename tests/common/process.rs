//! The built `fulcrum` binary as a child process: start it, signal it, wait for its exit, and
//! probe `/ready` on a kept-alive admin connection.

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `fulcrum` with no `RUST_LOG` and no `LB_*` variables from the test's environment.
pub fn fulcrum() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fulcrum"));
    cmd.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("LB_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `contents` to a file named for this test process.
pub fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("fulcrum-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// A fresh directory under the system temp dir, removed when dropped; every daemon registered
/// with [`Scratch::watch`] that still runs then is killed (SIGKILL: a draining Pingora ignores
/// other signals), so a failing test leaves nothing behind.
pub struct Scratch {
    dir: PathBuf,
    pids: RefCell<Vec<u32>>,
}

impl Scratch {
    /// `$TMPDIR/fulcrum-<name>-<pid>`, emptied.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fulcrum-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            pids: RefCell::new(vec![]),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Kill `pid` at the end if it still runs.
    pub fn watch(&self, pid: u32) {
        self.pids.borrow_mut().push(pid);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for &pid in self.pids.borrow().iter() {
            if alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `pid` runs (a zombie does not: a daemon's parent is init, which may reap late).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// A running child, killed when dropped (a failing test leaves nothing behind).
pub struct Running(pub Child);

impl Running {
    /// Starts `fulcrum -c config` in the foreground, output discarded.
    pub fn start(config: &std::path::Path) -> Self {
        Self(
            fulcrum()
                .arg("-c")
                .arg(config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// Sends `sig` (`-TERM`, `-QUIT`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Its exit code, once it has exited within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    assert!(
        super::wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "nothing listens on {addr}"
    );
}

/// `GET /ready` on a kept-alive connection; returns the status (0 when the connection is gone).
pub fn ready_status(stream: &mut TcpStream) -> u16 {
    use std::io::{BufRead, Read, Write};
    if stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n")
        .is_err()
    {
        return 0;
    }
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return 0;
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    status
}
