//! The access log: one JSON line per request, written off the request path.
//!
//! A request formats its line and hands it to a bounded queue; a dedicated thread writes the
//! queue to stdout or to `access_log: PATH` through a buffer, flushing whenever the queue runs
//! empty. A request never waits for the disk: when the queue is full (the disk cannot keep up)
//! the line is dropped and counted, and the count is reported in the log itself.
//!
//! The file is opened when the log is made (so a bad path fails the start), but the writer
//! thread starts only in [`AccessLogWriter`], a pingora background service, that is after
//! pingora has forked into the background with `-d`: threads do not survive a fork.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
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
pub struct AccessLog {
    /// The queue to the writer thread, once it runs.
    tx: OnceLock<SyncSender<String>>,
    /// Lines queued and not yet flushed by the writer.
    pending: Arc<AtomicU64>,
    /// Where the writer thread will write, until it starts.
    out: Mutex<Option<Box<dyn Write + Send>>>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("started", &self.tx.get().is_some())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl AccessLog {
    /// Logs to stdout, once started.
    pub fn stdout() -> Self {
        Self::new(Box::new(io::stdout()))
    }

    /// Appends to the file at `path` (created if missing, opened now), once started.
    pub fn file(path: &Path) -> io::Result<Self> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self::new(Box::new(f)))
    }

    /// Logs to any writer, once [`Self::start`]ed. Lines logged before are dropped and counted.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            tx: OnceLock::new(),
            pending: Arc::new(AtomicU64::new(0)),
            out: Mutex::new(Some(out)),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Logs to any writer from now on (tests use a pipe or a buffer).
    pub fn spawn(out: Box<dyn Write + Send>) -> io::Result<Self> {
        let log = Self::new(out);
        log.start()?;
        Ok(log)
    }

    /// Starts the writer thread (in the process that will serve: after any fork). A second call
    /// does nothing.
    pub fn start(&self) -> io::Result<()> {
        let out = match self.out.lock() {
            Ok(mut out) => out.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(out) = out else {
            return Ok(());
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (dropped, pending) = (self.dropped.clone(), self.pending.clone());
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let out = BufWriter::with_capacity(64 * 1024, out);
                write_loop(rx, out, &dropped, &pending)
            })?;
        let _first = self.tx.set(tx);
        Ok(())
    }

    /// Queues one line; never blocks.
    pub fn log(&self, entry: &AccessEntry<'_>) {
        let Some(tx) = self.tx.get() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        self.pending.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (up to `limit`) until every queued line has been written and flushed.
    pub async fn wait_written(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Lines dropped because the writer could not keep up (or had not started).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The pingora background service that starts an [`AccessLog`]'s writer thread when the server
/// starts its services, after daemonizing. The proxy service depends on it, so no request is
/// served before the log can take its line.
pub struct AccessLogWriter(pub Arc<AccessLog>);

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start_with_ready_notifier(
        &self,
        _shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        if let Err(e) = self.0.start() {
            log::error!("cannot start the access-log writer: {e}; access log lines are dropped");
        }
        ready.notify_ready();
    }
}

fn write_loop(
    rx: Receiver<String>,
    mut out: BufWriter<Box<dyn Write + Send>>,
    dropped: &AtomicU64,
    pending: &AtomicU64,
) {
    let mut reported = 0;
    while let Ok(line) = rx.recv() {
        let mut next = Some(line);
        let mut batch = 0;
        while let Some(line) = next.take() {
            batch += 1;
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
        pending.fetch_sub(batch, Ordering::Relaxed);
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
