//! The access log: one JSON line per request, written off the request path.
//!
//! A request formats its line and hands it to a bounded queue; a dedicated thread writes the
//! queue to stdout or to `access_log: PATH` through a buffer, flushing whenever the queue runs
//! empty. A request never waits for the disk: when the queue is full (the disk cannot keep up)
//! the line is dropped and counted, and the count is reported in the log itself.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

/// Lines queued before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct AccessEntry<'a> {
    /// When the request finished (RFC 3339, UTC).
    pub time: String,
    /// Client address (after trusted-proxy resolution).
    pub client: Option<std::net::IpAddr>,
    /// Method.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Status sent (0 if none).
    pub status: u16,
    /// Backend of the last attempt.
    pub backend: Option<&'a str>,
    /// Attempts made.
    pub attempts: u32,
    /// Time to the backend's response headers, ms.
    pub upstream_ms: Option<f64>,
    /// Total time, ms.
    pub total_ms: f64,
    /// Response body bytes sent to the client.
    pub bytes: usize,
    /// The request id.
    pub request_id: Option<&'a str>,
    /// The error that ended the request, if any.
    pub error: Option<String>,
}

/// A non-blocking JSON-lines access log.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Logs to stdout.
    pub fn stdout() -> io::Result<Self> {
        Self::spawn(Box::new(io::stdout()))
    }

    /// Appends to the file at `path` (created if missing).
    pub fn file(path: &Path) -> io::Result<Self> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Self::spawn(Box::new(f))
    }

    /// Logs to any writer (tests use a pipe or a buffer).
    pub fn spawn(out: Box<dyn Write + Send>) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, BufWriter::with_capacity(64 * 1024, out), &counter))?;
        Ok(Self { tx, dropped })
    }

    /// Queues one line; never blocks.
    pub fn log(&self, entry: &AccessEntry<'_>) {
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_loop(
    rx: Receiver<String>,
    mut out: BufWriter<Box<dyn Write + Send>>,
    dropped: &AtomicU64,
) {
    let mut reported = 0;
    while let Ok(line) = rx.recv() {
        let mut next = Some(line);
        while let Some(line) = next.take() {
            if out.write_all(line.as_bytes()).is_err() {
                return;
            }
            next = match rx.try_recv() {
                Ok(l) => Some(l),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
            };
        }
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped > reported {
            let note = format!(
                "{{\"time\":\"{}\",\"access_log_dropped\":{}}}\n",
                crate::time::rfc3339(SystemTime::now()),
                now_dropped - reported
            );
            let _ = out.write_all(note.as_bytes());
            reported = now_dropped;
        }
        if out.flush().is_err() {
            return;
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_one_json_line_per_entry_and_flushes_on_drop() {
        let buf = Shared::default();
        let log = AccessLog::spawn(Box::new(buf.clone())).unwrap();
        for i in 0..3u16 {
            log.log(&AccessEntry {
                time: "t".into(),
                client: Some("127.0.0.1".parse().unwrap()),
                method: "GET",
                path: "/a?b=\"c\"",
                status: 200 + i,
                backend: Some("web1"),
                attempts: 1,
                upstream_ms: Some(1.5),
                total_ms: 2.0,
                bytes: 10,
                request_id: Some("id"),
                error: None,
            });
        }
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            if text.lines().count() == 3 || std::time::Instant::now() > deadline {
                let lines: Vec<serde_json::Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                assert_eq!(lines.len(), 3);
                assert_eq!(lines[2]["status"], 202);
                assert_eq!(lines[0]["path"], "/a?b=\"c\"");
                assert_eq!(lines[0]["client"], "127.0.0.1");
                assert_eq!(lines[0]["backend"], "web1");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
