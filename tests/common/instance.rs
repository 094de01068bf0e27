//! One `fulcrum -c FILE` in the foreground for process-level tests that change FILE under a
//! running process: fixed free ports, output captured to a log file, and what the admin
//! listener shows (`/api/backends`, the JSON metrics' strategy, a Prometheus sample).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::process::{free_port, fulcrum, wait_listening, Running, Scratch};
use super::{admin_call, get, request, wait_until};

/// One `fulcrum -c FILE` in the foreground (killed when dropped), its stdout and stderr going to
/// a log file in its own scratch directory.
pub struct Instance {
    pub child: Running,
    pub config: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Dropped after `child`: the directory goes once the process is gone.
    _scratch: Scratch,
}

impl Instance {
    /// Starts it on two free ports (traffic, admin) with the config `make(port, admin_port)`
    /// returns, in a [`Scratch`] directory named `name`, and waits until it proxies a request.
    pub fn start(name: &str, make: impl FnOnce(u16, u16) -> String) -> Self {
        let scratch = Scratch::new(name);
        let (port, admin_port) = (free_port(), free_port());
        let config = scratch.path("fulcrum.yaml");
        let log = scratch.path("fulcrum.log");
        std::fs::write(&config, make(port, admin_port)).expect("config");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = fulcrum()
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn fulcrum");
        let me = Self {
            child: Running(child),
            config,
            log,
            port,
            admin_port,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
            _scratch: scratch,
        };
        wait_listening(me.addr);
        wait_listening(me.admin);
        assert!(
            wait_until(Duration::from_secs(10), || request(
                me.addr,
                "GET",
                "/",
                &[],
                None
            )
            .is_ok_and(|r| r.status == 200)),
            "it never answered 200\n{}",
            me.log()
        );
        me
    }

    /// Replaces the config file (written aside, then renamed: never read half-written).
    pub fn write(&self, yaml: &str) {
        let aside = self.config.with_extension("new");
        std::fs::write(&aside, yaml).expect("config");
        std::fs::rename(&aside, &self.config).expect("rename config");
    }

    /// The log so far.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- fulcrum log ---\n{text}--- end of log ---")
    }

    /// Fails the test, with the log, if the process has exited.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.child.0.try_wait().expect("try_wait") {
            panic!("fulcrum exited {when}: {status}\n{}", self.log());
        }
    }

    /// `GET /api/backends`.
    pub fn backends(&self) -> Vec<Value> {
        let r = admin_call(self.admin, "GET", "/api/backends", None, None);
        assert_eq!(r.status, 200, "GET /api/backends: {r:?}");
        match serde_json::from_str(&r.body) {
            Ok(Value::Array(v)) => v,
            other => panic!("/api/backends is not a JSON array: {other:?}"),
        }
    }

    /// The ids `/api/backends` lists, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .backends()
            .iter()
            .map(|b| b["id"].as_str().expect("id").to_string())
            .collect();
        ids.sort();
        ids
    }

    /// The weight `/api/backends` shows for `id`.
    pub fn weight(&self, id: &str) -> Option<u64> {
        self.backends()
            .iter()
            .find(|b| b["id"] == id)
            .and_then(|b| b["weight"].as_u64())
    }

    /// The `"strategy"` of the JSON metrics.
    pub fn strategy(&self) -> String {
        let r = get(self.admin, "/metrics?format=json");
        assert_eq!(r.status, 200, "JSON metrics: {r:?}");
        let j: Value = serde_json::from_str(&r.body).expect("JSON metrics");
        j["strategy"].as_str().unwrap_or_default().to_string()
    }

    /// The value of the Prometheus series `name` whose labels include `label` (all of them
    /// when empty), if `/metrics` has one.
    pub fn metric(&self, name: &str, label: &str) -> Option<f64> {
        let r = get(self.admin, "/metrics");
        assert_eq!(r.status, 200, "/metrics: {r:?}");
        prometheus_value(&r.body, name, label)
    }
}

/// The value of the first series `name{...label...} value` in Prometheus text.
pub fn prometheus_value(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, rest) = match l.split_once('{') {
            Some((n, rest)) => {
                let (labels, value) = rest.rsplit_once('}')?;
                ((n, labels), value)
            }
            None => {
                let (n, value) = l.split_once(' ')?;
                ((n, ""), value)
            }
        };
        (series.0 == name && series.1.contains(label))
            .then(|| rest.split_whitespace().next()?.parse().ok())
            .flatten()
    })
}

/// The strings of a JSON array field (empty when absent or not an array).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
