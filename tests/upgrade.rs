//! Zero-downtime upgrade of the built binary, under load: three upgrades in a row (a new
//! process with `-u`, then SIGQUIT to the old) while clients on new and kept-alive connections
//! keep sending requests; every request is answered 200 and no connection is refused or reset.
//! Each upgrade follows the reload recipe: `fulcrum -t` first, and a config that fails it
//! never reaches a new process, so the old one keeps serving.
//!
//! Pingora matches inherited listening sockets to the new process's listeners by address
//! string (its open PR #990), so the ports are chosen once and written into the config as
//! fixed numbers, the same for every generation (never `:0`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::load::{total, Load, PhaseStats};
use common::process::*;
use common::*;
use fulcrum::demo::DemoBackend;

/// Upgrades performed under load.
const UPGRADES: usize = 3;
/// Load clients opening a new connection per request.
const FRESH_CLIENTS: usize = 2;
/// Load clients on kept-alive connections.
const KEPT_CLIENTS: usize = 2;

/// One generation of the server: the child and the file its output goes to.
struct Generation {
    child: Running,
    log: PathBuf,
}

impl Generation {
    /// Starts `fulcrum -c config` (with `-u` when `upgrade`) in the foreground, its stdout and
    /// stderr going to `log`.
    fn start(config: &Path, upgrade: bool, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = fulcrum();
        cmd.arg("-c").arg(config);
        if upgrade {
            cmd.arg("-u");
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn fulcrum");
        Self {
            child: Running(child),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn alive(&mut self) -> bool {
        self.child.0.try_wait().expect("try_wait").is_none()
    }
}

/// Every generation's output, for failure messages.
fn logs(gens: &[Generation]) -> String {
    gens.iter()
        .enumerate()
        .map(|(i, g)| {
            let text = std::fs::read_to_string(&g.log).unwrap_or_default();
            format!("--- generation {i} (pid {}) ---\n{text}", g.pid())
        })
        .collect()
}

/// `fulcrum -t -c config`.
fn validate(config: &Path) -> Output {
    fulcrum()
        .arg("-t")
        .arg("-c")
        .arg(config)
        .output()
        .expect("run fulcrum -t")
}

/// The config every generation runs: fixed ports, two backends, an upgrade socket and pid
/// file of this test's own.
fn config_yaml(port: u16, admin: u16, dir: &Path, backends: &[DemoBackend]) -> String {
    let mut yaml = format!(
        "port: {port}\nbind_address: 127.0.0.1\nadmin_address: 127.0.0.1:{admin}\n\
         logging_enabled: false\nshutdown_timeout: 10s\nhealth_check_interval: 1s\n\
         pingora:\n  threads: 2\n  upgrade_sock: {sock}\n  pid_file: {pid}\nbackends:\n",
        sock = dir.join("upgrade.sock").display(),
        pid = dir.join("fulcrum.pid").display(),
    );
    for b in backends {
        yaml.push_str(&format!("  - {{id: {}, url: \"{}\"}}\n", b.id(), b.url()));
    }
    yaml
}

#[test]
fn three_upgrades_under_load_answer_every_request() {
    let started = Instant::now();
    let backends: Vec<DemoBackend> = ["up1", "up2"]
        .iter()
        .map(|id| DemoBackend::start(id, Duration::from_millis(5)).expect("backend"))
        .collect();
    let dir = std::env::temp_dir().join(format!("fulcrum-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let (port, admin_port) = (free_port(), free_port());
    let config = dir.join("fulcrum.yaml");
    std::fs::write(&config, config_yaml(port, admin_port, &dir, &backends)).expect("config");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "{}upstream_timout: 5s\n",
            config_yaml(port, admin_port, &dir, &backends)
        ),
    )
    .expect("bad config");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();

    let mut gens = vec![Generation::start(&config, false, dir.join("gen0.log"))];
    wait_listening(addr);
    wait_listening(admin);
    assert!(
        wait_until(Duration::from_secs(10), || request(
            addr,
            "GET",
            "/",
            &[],
            None
        )
        .is_ok_and(|r| r.status == 200)),
        "generation 0 never answered 200\n{}",
        logs(&gens)
    );

    // Bounded by a hard time limit and a request cap far above what ~20 s of this load sends.
    let load = Load::start(
        addr,
        FRESH_CLIENTS,
        KEPT_CLIENTS,
        200_000,
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(500));

    // The reload recipe refuses a bad config before any process is told anything: `-t` fails,
    // so no new process starts and the old one is not signalled; it keeps serving.
    let checked = validate(&bad);
    assert_eq!(
        checked.status.code(),
        Some(1),
        "fulcrum -t accepted a config with an unknown key: {checked:?}"
    );
    assert!(
        String::from_utf8_lossy(&checked.stderr).contains("upstream_timout"),
        "the error does not name the bad key: {checked:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        assert_eq!(
            get(addr, "/").status,
            200,
            "after a failed -t\n{}",
            logs(&gens)
        );
    }
    assert!(gens[0].alive(), "the old process died after a failed -t");

    let mut handovers = Vec::new();
    for n in 1..=UPGRADES {
        let checked = validate(&config);
        assert!(checked.status.success(), "fulcrum -t failed: {checked:?}");
        let before = load.total().requests;
        let quit_at = Instant::now();
        gens.push(Generation::start(
            &config,
            true,
            dir.join(format!("gen{n}.log")),
        ));
        load.next_phase();
        gens[n - 1].child.signal("-QUIT");
        let code = gens[n - 1].child.wait_exit(Duration::from_secs(20));
        let took = quit_at.elapsed();
        assert_eq!(
            code,
            Some(0),
            "generation {} did not exit cleanly within 20 s of SIGQUIT\n{}",
            n - 1,
            logs(&gens)
        );
        assert!(
            gens[n].alive(),
            "generation {n} died during the upgrade\n{}",
            logs(&gens)
        );
        handovers.push((took, load.total().requests - before));
        // the new generation alone carries the load for a moment before the next upgrade
        std::thread::sleep(Duration::from_millis(500));
    }
    let before = load.total().requests;
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        load.total().requests > before,
        "no requests complete on the last generation"
    );
    let phases = load.stop();

    let last = gens.last_mut().unwrap();
    last.child.signal("-TERM");
    let code = last.child.wait_exit(Duration::from_secs(15));
    let sum = total(&phases);
    report(&phases, &sum, &handovers, started.elapsed());
    assert_eq!(
        code,
        Some(0),
        "the last generation did not stop\n{}",
        logs(&gens)
    );
    sum.assert_all_answered(&logs(&gens));
    for (n, p) in phases.iter().enumerate().skip(1) {
        // the load really overlapped every hand-over ...
        assert!(
            p.requests >= 100,
            "phase {n} saw only {} requests",
            p.requests
        );
        // ... and each kept-alive client's connection to the old process was ended by it,
        // either with `Connection: close` on a response or, idle, by a close before the next
        // request (then the client resends once): the kept-alive path was exercised.
        assert!(
            p.closes_announced + p.kept_reconnects >= KEPT_CLIENTS as u64,
            "upgrade {n}: kept-alive connections did not span the hand-over: {p:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prints the counts (shown by `cargo test -- --nocapture`, or with a failure).
fn report(
    phases: &[PhaseStats],
    sum: &PhaseStats,
    handovers: &[(Duration, u64)],
    elapsed: Duration,
) {
    println!("upgrade test: {elapsed:?} in all");
    for (n, p) in phases.iter().enumerate() {
        let what = match n {
            0 => "generation 0 alone, bad config refused by -t".to_string(),
            n => format!(
                "upgrade {n}: old exited {:?} after -u/QUIT, {} requests meanwhile",
                handovers[n - 1].0,
                handovers[n - 1].1
            ),
        };
        println!(
            "  phase {n} ({what}): {} requests, {} ok, {} connections, {} kept-alive closes announced, reconnects {} kept-alive / {} fresh, {} failures",
            p.requests,
            p.ok,
            p.connections,
            p.closes_announced,
            p.kept_reconnects,
            p.fresh_reconnects,
            p.failures.len()
        );
    }
    println!(
        "  total: {} requests, {} ok, reconnects {} kept-alive / {} fresh, {} failures",
        sum.requests,
        sum.ok,
        sum.kept_reconnects,
        sum.fresh_reconnects,
        sum.failures.len()
    );
}
