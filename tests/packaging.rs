//! Packaging for systemd users (issue 8): `systemd/fulcrum.service` passes `systemd-analyze
//! verify` (and that check catches a typo), the packaged `/etc/fulcrum/fulcrum.yaml`
//! (`debian/fulcrum.yaml`) agrees with the unit and with `conf/fulcrum.yaml` and passes
//! `fulcrum -t`, and `systemd/fulcrum-reload`, the unit's ExecReload, hands a running daemon's
//! sockets to a new one or refuses an invalid configuration without touching the running one.
//! The `.deb` itself is built, installed and purged by `.ci/run` (`debian/check-package`).

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::{alive, free_port, Scratch};
use common::{missing_program, request, tools_present, wait_until};
use fulcrum::demo::DemoBackend;
use serde_yaml::{Mapping, Value};

const BIN: &str = env!("CARGO_BIN_EXE_fulcrum");

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The values of every `key=` line of a unit file, in order.
fn directive(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

fn single(unit: &str, key: &str) -> String {
    let values = directive(unit, key);
    assert_eq!(values.len(), 1, "fulcrum.service: {key}= {values:?}");
    values[0].clone()
}

/// `systemd-analyze verify --man=no` on `text` saved as `fulcrum.service` in `dir`: whether it
/// exited 0, and everything it printed.
fn analyze(dir: &Path, text: &str) -> (bool, String) {
    let path = dir.join("fulcrum.service");
    fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

#[test]
fn the_unit_passes_systemd_analyze_verify_and_a_typo_fails_it() {
    if !tools_present(missing_program("systemd-analyze", "Debian package systemd")) {
        return;
    }
    let scratch = Scratch::new("verify");
    // verify insists that the programs exist: point the unit at the ones built here.
    let unit = read("systemd/fulcrum.service");
    let script = repo_file("systemd/fulcrum-reload");
    let local = unit
        .replace("/usr/bin/fulcrum ", &format!("{BIN} "))
        .replace("/usr/lib/fulcrum/fulcrum-reload", &script.to_string_lossy());
    assert_eq!(local.matches(BIN).count(), 2, "ExecStartPre and ExecStart");
    assert!(local.contains(&format!("ExecReload={} ", script.display())));

    let (ok, out) = analyze(scratch.dir(), &local);
    assert!(ok && out.is_empty(), "systemd-analyze verify: {out}");

    // Some mistakes make it exit non-zero, others only print: either must be caught. (An
    // unknown capability name passes silently in systemd 252.)
    let typos = [
        ("Type=forking", "Type=forkng"),
        ("PIDFile=", "PIDFle="),
        ("ProtectSystem=strict", "ProtectSystem=strickt"),
        ("TimeoutStopSec=60s", "TimeoutStopSec=60x"),
        (
            &format!("ExecStart={BIN}"),
            "ExecStart=/nonexistent/fulcrum",
        ),
    ];
    for (from, to) in typos {
        // At the start of a line: a directive, not a comment that names it.
        let bad = local.replacen(&format!("\n{from}"), &format!("\n{to}"), 1);
        assert_ne!(bad, local, "no line starts with {from}");
        let (ok, out) = analyze(scratch.dir(), &bad);
        assert!(!ok || !out.is_empty(), "verify accepted {to}");
    }
}

#[test]
fn the_packaged_config_is_the_example_with_the_paths_of_the_unit() {
    let parse = |rel: &str| -> Mapping {
        match serde_yaml::from_str(&read(rel)) {
            Ok(Value::Mapping(m)) => m,
            other => panic!("{rel}: not a mapping: {other:?}"),
        }
    };
    let (mut packaged, mut example) = (parse("debian/fulcrum.yaml"), parse("conf/fulcrum.yaml"));
    let pingora = packaged.remove("pingora").expect("pingora section");
    let access_log = packaged.remove("access_log").expect("access_log");
    example.remove("pingora");
    example.remove("access_log");
    assert_eq!(
        packaged, example,
        "debian/fulcrum.yaml and conf/fulcrum.yaml differ beyond pingora and access_log"
    );

    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let keys: Vec<String> = pingora
        .as_mapping()
        .expect("pingora mapping")
        .keys()
        .map(|k| text(Some(k)))
        .collect();
    assert_eq!(keys, ["pid_file", "upgrade_sock"]);
    let pid_file = text(pingora.get("pid_file"));
    let sock = text(pingora.get("upgrade_sock"));
    let access_log = text(Some(&access_log));

    let unit = read("systemd/fulcrum.service");
    let conf = "/etc/fulcrum/fulcrum.yaml";
    assert_eq!(single(&unit, "PIDFile"), pid_file);
    assert_eq!(
        single(&unit, "ExecStart"),
        format!("/usr/bin/fulcrum -d -c {conf}")
    );
    assert_eq!(
        single(&unit, "ExecStartPre"),
        format!("/usr/bin/fulcrum -t -c {conf}")
    );
    assert_eq!(
        single(&unit, "ExecReload"),
        format!("/usr/lib/fulcrum/fulcrum-reload -c {conf} -p {pid_file} -s {sock} $MAINPID")
    );
    // Both files live in the RuntimeDirectory, the access log in the LogsDirectory, and the
    // sandbox lets the service write to both.
    assert_eq!(single(&unit, "RuntimeDirectory"), "fulcrum");
    assert_eq!(single(&unit, "LogsDirectory"), "fulcrum");
    assert!(pid_file.starts_with("/run/fulcrum/") && sock.starts_with("/run/fulcrum/"));
    assert!(access_log.starts_with("/var/log/fulcrum/"), "{access_log}");
    assert_eq!(
        single(&unit, "ReadWritePaths"),
        "/run/fulcrum /var/log/fulcrum"
    );
    for (key, want) in [
        ("Type", "forking"),
        ("User", "fulcrum"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("RuntimeDirectoryPreserve", "yes"),
    ] {
        assert_eq!(single(&unit, key), want, "{key}");
    }
    assert!(!single(&unit, "LimitNOFILE").is_empty());

    // A stop must outlast the drain: Pingora's 5 s of accepting after a hand-over, then
    // shutdown_timeout, then at most 5 s of runtime shutdown.
    let dur = |s: &str| humantime::parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    let drain = dur(&text(example.get("shutdown_timeout"))) + Duration::from_secs(10);
    assert!(dur(&single(&unit, "TimeoutStopSec")) > drain);
}

#[test]
fn the_packaged_config_passes_fulcrum_t() {
    let scratch = Scratch::new("check");
    // The only path -t checks is the access log's directory, which the package creates.
    let packaged = read("debian/fulcrum.yaml");
    let local = packaged.replace(
        "/var/log/fulcrum/access.log",
        &scratch.path("access.log").to_string_lossy(),
    );
    assert_ne!(local, packaged);
    let path = scratch.path("fulcrum.yaml");
    fs::write(&path, local).unwrap();
    let out = fulcrum_command(BIN)
        .args(["-t", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `program` with no `LB_*` or `RUST_LOG` from the test's environment.
fn fulcrum_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("LB_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn pid_in(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Runs `command` with stdout and stderr to the file `log` (never a pipe: a daemon it starts
/// keeps them open); returns its exit code and what the file holds afterwards.
fn run_logged(command: &mut Command, log: &Path) -> (Option<i32>, String) {
    let file = fs::File::create(log).unwrap();
    let status = command
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    (status.code(), fs::read_to_string(log).unwrap_or_default())
}

#[test]
fn the_reload_script_hands_the_sockets_over_and_refuses_an_invalid_config() {
    let scratch = Scratch::new("reload");
    let backend = DemoBackend::start("web1", Duration::ZERO).unwrap();
    let (port, admin) = (free_port(), free_port());
    let (pid_file, sock) = (scratch.path("fulcrum.pid"), scratch.path("upgrade.sock"));
    // Fixed ports: Pingora matches handed-over sockets by address. A short shutdown_timeout so
    // that the old daemon exits soon after the hand-over.
    let yaml = format!(
        "port: {port}\nbind_address: 127.0.0.1\nadmin_address: 127.0.0.1:{admin}\n\
         shutdown_timeout: 1s\nhealth_check_interval: 1s\nlogging_enabled: false\n\
         pingora:\n  pid_file: {}\n  upgrade_sock: {}\n\
         backends:\n  - id: web1\n    url: {}\n",
        pid_file.display(),
        sock.display(),
        backend.url()
    );
    let conf = scratch.path("fulcrum.yaml");
    fs::write(&conf, &yaml).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let serves = || request(addr, "GET", "/", &[], None).is_ok_and(|r| r.status == 200);
    let reload = |conf: &Path, pid: u32, log: &str| {
        let mut cmd = fulcrum_command(repo_file("systemd/fulcrum-reload"));
        cmd.args(["-b", BIN, "-c"])
            .arg(conf)
            .arg("-p")
            .arg(&pid_file)
            .arg("-s")
            .arg(&sock)
            .arg(pid.to_string());
        run_logged(&mut cmd, &scratch.path(log))
    };

    let (code, log) = run_logged(
        fulcrum_command(BIN).arg("-d").arg("-c").arg(&conf),
        &scratch.path("daemon.log"),
    );
    assert_eq!(code, Some(0), "fulcrum -d: {log}");
    assert!(
        wait_until(Duration::from_secs(10), || pid_in(&pid_file)
            .is_some_and(alive)),
        "no running daemon named in the pid file"
    );
    let old = pid_in(&pid_file).unwrap();
    scratch.watch(old);
    assert!(
        wait_until(Duration::from_secs(10), serves),
        "daemon does not serve"
    );

    // An invalid configuration: refused, nothing touched.
    let bad = scratch.path("bad.yaml");
    fs::write(&bad, format!("{yaml}strategyy: fastest\n")).unwrap();
    let (code, out) = reload(&bad, old, "reload-bad.log");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("strategyy") && out.contains("nothing changed"),
        "{out}"
    );
    assert_eq!(pid_in(&pid_file), Some(old));
    assert!(alive(old) && !sock.exists());
    assert!(
        serves(),
        "the running daemon stopped serving after a refused reload"
    );

    // A valid one: the new process takes the sockets over and the pid file names it.
    let (code, out) = reload(&conf, old, "reload.log");
    let new = pid_in(&pid_file).unwrap_or(old);
    scratch.watch(new);
    assert_eq!(code, Some(0), "{out}");
    assert_ne!(new, old, "{out}");
    assert!(alive(new), "{out}");
    assert!(
        out.contains(&format!("pid {new} took over from pid {old}")),
        "{out}"
    );
    assert!(serves(), "nothing serves right after the hand-over");
    // The old one keeps accepting for Pingora's 5 s, drains for shutdown_timeout, and exits.
    assert!(
        wait_until(Duration::from_secs(20), || !alive(old)),
        "the old daemon {old} did not exit after the hand-over"
    );
    assert!(
        alive(new) && serves(),
        "the new daemon does not serve alone"
    );
}
